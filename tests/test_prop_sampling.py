"""Property tests of the shared sampler, weights.sampling.sample_next, and of both backends' generate.

The allowed sets are computed here independently of the code: top-k keeps every token whose logit is >= the
k-th largest (ties at the boundary may go either way), and the nucleus (top_p) is, as sample_next documents,
the smallest set of most probable tokens whose probability reaches top_p: a token is in it iff the tokens
strictly more probable than it hold less than top_p.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.strategies import dtypes, few_examples, model_configs, one_torch_thread, random_params, seeds, tiny_models
from weights import NonFiniteLogitsError
from weights.sampling import row_generators, sample_next

DRAWS = 16  # draws per row of logits in each example: the rows are repeated, each repeat gets its own uniform
# Slack when comparing a token's "mass strictly above" with top_p: the code's float64 cumsum and this file's
# fsum differ by <= V * eps64 ~ 1e-14, so only a boundary within 1e-9 of top_p is given the benefit of the doubt.
NUCLEUS_SLACK = 1e-9


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@st.composite
def logit_matrices(draw, ties=True):
    """(B, V) logits, float32 or float64. With ties, entries come from a few levels, so equal logits are
    common; without, Gaussian of a drawn scale with every row's entries distinct."""
    dtype, shape = draw(dtypes), (draw(st.integers(1, 4)), draw(st.integers(1, 40)))
    if ties:
        return draw(arrays(dtype, shape, elements=st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0])))
    rng = np.random.default_rng(draw(seeds))
    logits = (rng.standard_normal(shape) * draw(st.sampled_from([0.1, 1.0, 3.0, 10.0]))).astype(dtype)
    assume(all(len(np.unique(row)) == shape[1] for row in logits))
    return logits


temperatures = st.sampled_from([0.3, 1.0, 2.5]) | st.floats(0.05, 20)
top_ps = st.none() | st.floats(0.01, 1.0, exclude_min=True)


def draw_many(logits, seed, **options):
    """DRAWS tokens for each row of logits (B, V) -> (B, DRAWS)."""
    B = logits.shape[0]
    tokens = sample_next(np.repeat(logits, DRAWS, axis=0), np.random.default_rng(seed), **options)  # (B * DRAWS,)
    return tokens.reshape(B, DRAWS)


def top_k_allowed(logits, k):
    """(B, V) True where the logit is >= the row's k-th largest: the tokens top-k may keep (k >= V: all)."""
    if not k or k >= logits.shape[1]:
        return np.ones(logits.shape, dtype=bool)
    kth = -np.sort(-logits, axis=-1)[:, k - 1 : k]  # (B, 1)
    return logits >= kth


def probabilities(logits, temperature, top_k=None, top_p=None):
    """Exact (float64, fsum) sampling distribution of each row, from the definitions in the module docstring.
    Rows must have distinct logits when top_k cuts (then the top-k set is unique)."""
    z = np.where(top_k_allowed(logits, top_k), logits.astype(np.float64) / temperature, -np.inf)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= np.apply_along_axis(math.fsum, -1, p)[:, None]
    if top_p is not None:
        for row in p:
            above = np.array([math.fsum(row[row > q]) for q in row])  # mass of the strictly more probable tokens
            row[above >= top_p + NUCLEUS_SLACK] = 0
            row /= math.fsum(row)
    return p


@given(logit_matrices(), st.data())
def test_temperature_zero_and_top_k_one_are_the_argmax(logits, data):
    """temperature 0 (any top_k, top_p) and top_k 1 (any temperature, top_p) return np.argmax of each row —
    the first of tied maxima — and, being greedy, leave the generator untouched."""
    options = data.draw(
        st.fixed_dictionaries({"temperature": st.just(0.0), "top_k": st.none() | st.integers(1, 50), "top_p": top_ps})
        | st.fixed_dictionaries({"temperature": temperatures, "top_k": st.just(1), "top_p": top_ps})
    )
    rng = np.random.default_rng(data.draw(seeds))
    state = rng.bit_generator.state
    np.testing.assert_array_equal(sample_next(logits, rng, **options), logits.argmax(axis=-1))
    assert rng.bit_generator.state == state


@given(logit_matrices(), st.integers(1, 45), temperatures, seeds)
def test_only_top_k_tokens_are_drawn(logits, top_k, temperature, seed):
    """Every draw is a token whose logit is >= the k-th largest of its row (ties included: which of tied
    tokens top-k keeps is unspecified). Exact comparison, no tolerance."""
    tokens = draw_many(logits, seed, temperature=temperature, top_k=top_k)
    allowed = top_k_allowed(logits, top_k)
    assert np.all(np.take_along_axis(allowed, tokens, axis=1))


@given(logit_matrices(ties=False), st.none() | st.integers(1, 45), st.floats(0.01, 1.0), temperatures, seeds)
def test_only_the_nucleus_is_drawn(logits, top_k, top_p, temperature, seed):
    """With top_p, every draw is in the nucleus of its row's (top-k) distribution: the tokens strictly more
    probable than it hold < top_p (+ NUCLEUS_SLACK for the float64 rounding of that mass). Logits without
    ties, so the top-k set and the order of probabilities are unique."""
    tokens = draw_many(logits, seed, temperature=temperature, top_k=top_k, top_p=top_p)
    nucleus = probabilities(logits, temperature, top_k, top_p) > 0
    assert np.all(np.take_along_axis(nucleus, tokens, axis=1))


@given(logit_matrices(), st.data(), seeds)
def test_same_seed_same_draws_and_one_uniform_per_row(logits, data, seed):
    """The draw is a function of (logits, seed) alone: the same logits, once as they are and once as a copy that
    went through torch (tensor -> .numpy(), as gpt2_torch hands them over), with generators of the same seed, give
    the same tokens (no global random state, no dependence on the array's origin); and whatever the logits and
    options, each call consumes exactly one uniform per row — so the generators of two backends whose logits
    differ slightly stay in step for the rest of the text."""
    top_k = data.draw(st.none() | st.integers(2, 45))  # not 1: greedy draws no uniform
    options = dict(temperature=data.draw(temperatures), top_k=top_k, top_p=data.draw(top_ps))
    from_numpy = sample_next(logits, np.random.default_rng(seed), **options)
    from_torch = sample_next(torch.tensor(logits).numpy(), np.random.default_rng(seed), **options)
    np.testing.assert_array_equal(from_numpy, from_torch)
    rng, reference = np.random.default_rng(seed), np.random.default_rng(seed)
    sample_next(data.draw(arrays(logits.dtype, logits.shape, elements=st.floats(-50, 50, width=32))), rng, **options)
    reference.random(logits.shape[0])
    assert rng.bit_generator.state == reference.bit_generator.state


@given(logit_matrices(), st.data(), seeds)
def test_float32_logits_draw_what_their_float64_copies_draw(logits, data, seed):
    """The sampler chooses the argmax and the top-k candidates on float32 logits as they come and widens only the
    candidates to float64; float64 holds every float32 exactly and in the same order, ties included, so the
    tokens are those of the same logits handed over in float64 (exact), greedy or not, on rows full of ties."""
    logits = logits.astype(np.float32)
    options = dict(temperature=data.draw(st.just(0.0) | temperatures), top_k=data.draw(st.none() | st.integers(1, 45)),
                   top_p=data.draw(top_ps))
    as_float32 = sample_next(logits, np.random.default_rng(seed), **options)
    as_float64 = sample_next(logits.astype(np.float64), np.random.default_rng(seed), **options)
    np.testing.assert_array_equal(as_float32, as_float64)


@given(logit_matrices(), st.data(), seeds)
def test_per_row_streams_draw_each_row_as_if_alone(logits, data, seed):
    """With one generator per row (row_generators), row b's token is the token that row drawn alone with
    generator b would give: a row's draws depend on its own stream, never on the other rows (exact)."""
    options = dict(temperature=data.draw(temperatures), top_k=data.draw(st.none() | st.integers(2, 45)),
                   top_p=data.draw(top_ps))
    B = logits.shape[0]
    together = sample_next(logits, row_generators(seed, range(B)), **options)
    alone = [sample_next(logits[b : b + 1], row_generators(seed, [b]), **options)[0] for b in range(B)]
    np.testing.assert_array_equal(together, alone)
    with pytest.raises(ValueError, match="generators for"):
        sample_next(logits, row_generators(seed, range(B + 1)), **options)


def test_sample_i_draws_the_same_numbers_whatever_the_number_of_samples():
    """row_generators(seed, [i]) is SeedSequence(seed).spawn(n)[i] for every n > i: sample 5 of 8 and sample
    5 of a batch covering 3..7 draw the same numbers (exact)."""
    spawned = [np.random.default_rng(child) for child in np.random.SeedSequence(1337).spawn(8)]
    ours = row_generators(1337, range(8))
    np.testing.assert_array_equal([g.random(4) for g in spawned], [g.random(4) for g in ours])
    in_a_batch, alone = row_generators(1337, range(3, 8))[2], row_generators(1337, [5])[0]
    np.testing.assert_array_equal(in_a_batch.random(4), alone.random(4))


def test_per_row_streams_are_independent():
    """Pairs (u_0, u_1) from rows 0 and 1 (and rows 0 and 7) over 20,000 steps fill a 10 x 10 grid of equal
    cells as independent uniforms would: Pearson's chi-square with 99 degrees of freedom has a p-value above
    0.1% (seeded, so the test is deterministic; a shared or correlated stream, e.g. every
    row drawing the same number, puts all pairs on the diagonal: chi-square ~180,000)."""
    rows = row_generators(2024, range(8))
    u = np.array([rows[b].random(20_000) for b in range(8)])  # (8, 20000)
    for a, b in ((0, 1), (0, 7)):
        counts, _, _ = np.histogram2d(u[a], u[b], bins=10, range=[[0, 1], [0, 1]])
        expected = u.shape[1] / 100
        assert chi_square_p_value(((counts - expected) ** 2 / expected).sum(), dof=99) > 0.001, (a, b)
    assert len({tuple(np.round(row[:5], 12)) for row in u}) == 8  # no two rows draw the same numbers


@given(logit_matrices(), st.data())
def test_non_finite_logits_are_refused(logits, data):
    """A NaN, +inf or -inf anywhere is NonFiniteLogitsError whatever the options, greedy included (np.argmax
    would pick the first NaN): no token is drawn from it, and the generator is untouched."""
    logits = logits.copy()
    B, V = logits.shape
    logits[data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, V - 1))] = data.draw(
        st.sampled_from([np.nan, np.inf, -np.inf]))
    options = dict(temperature=data.draw(st.just(0.0) | temperatures), top_k=data.draw(st.none() | st.integers(1, 50)),
                   top_p=data.draw(top_ps))
    rng = np.random.default_rng(data.draw(seeds))
    state = rng.bit_generator.state
    with pytest.raises(NonFiniteLogitsError, match="NaN or infinite"):
        sample_next(logits, rng, **options)
    assert rng.bit_generator.state == state


@given(logit_matrices(ties=False), st.sampled_from([5e-324, 1e-320, 1e-310, 1e-300, 1e-30]),
       st.none() | st.integers(2, 45), top_ps, seeds)
def test_tiny_temperatures_are_greedy(logits, temperature, top_k, top_p, seed):
    """A positive temperature so small that the logits divided by it overflow (the smallest subnormal among
    them) draws each row's argmax, and still one uniform per row. Rows here have distinct logits of order
    0.1 to 10, whose gaps (at least float32's spacing there, ~1e-9) are far above 745 x 1e-30, where exp
    underflows to 0: so 1e-30 is greedy for them too. Every NumPy floating-point warning is an error here
    but underflow (exp of very negative numbers is 0, as intended)."""
    rng, reference = np.random.default_rng(seed), np.random.default_rng(seed)
    with np.errstate(all="raise", under="ignore"):
        tokens = sample_next(logits, rng, temperature=temperature, top_k=top_k, top_p=top_p)
    np.testing.assert_array_equal(tokens, logits.argmax(axis=-1))
    reference.random(logits.shape[0])
    assert rng.bit_generator.state == reference.bit_generator.state


@given(st.floats(max_value=0, exclude_max=True) | st.just(np.nan), st.floats(0, 1, exclude_min=True))
def test_bad_temperature_raises(temperature, top_p):
    """A negative (or NaN) temperature is refused with ValueError, whatever else is asked."""
    with pytest.raises(ValueError, match="temperature"):
        sample_next(np.zeros((1, 3)), np.random.default_rng(0), temperature=temperature, top_p=top_p)


@given(st.floats(max_value=0) | st.floats(min_value=1, exclude_min=True) | st.just(np.nan))
def test_bad_top_p_raises(top_p):
    """top_p outside (0, 1] (NaN included) is refused with ValueError."""
    with pytest.raises(ValueError, match="top_p"):
        sample_next(np.zeros((1, 3)), np.random.default_rng(0), top_p=top_p)


@few_examples(2)
@given(model_configs(), seeds, st.data())
def test_both_backends_generate_the_same_tokens(config, seed, data):
    """The same random tiny model in both backends, in float64, generating with the same seed and options
    (temperature, top-k, top-p, batch, prompt, more new tokens than block_size so that the window slides),
    with and without the KV cache: all four token sequences are identical. Exact comparison: both backends
    draw with one NumPy generator through one function, so tokens can only differ where their logits fall on
    different sides of a decision (a uniform within the logits' difference of a CDF step). float64 keeps that
    difference small: both backends compute and hand over float64 logits, a few float64 roundings apart
    (the summation orders of their kernels); even float64 logits and their float32 rounding (6e-8 apart) gave
    the same token in 200,000 of 200,000 seeded draws (V = 40). In float32 the backends' logits differ by
    ~1e-6: still rare, but float64 keeps a spurious failure of this exact test out of reach."""
    torch_model, numpy_model = tiny_models(config, random_params(config, seed), "float64")
    rng = np.random.default_rng(seed)
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, config.block_size)))
    prompt = rng.integers(config.vocab_size, size=shape)  # (B, T)
    options = dict(
        max_new_tokens=data.draw(st.integers(1, config.block_size + 4)),
        temperature=data.draw(st.sampled_from([0.0, 0.8, 1.0, 1.7])),
        top_k=data.draw(st.none() | st.integers(1, config.vocab_size + 1)),
        top_p=data.draw(top_ps),
    )
    sample_seed = data.draw(seeds)
    texts = {
        (name, cache): model.generate(prompt, rng=np.random.default_rng(sample_seed), use_cache=cache, **options)
        for name, model in (("torch", torch_model), ("numpy", numpy_model)) for cache in (True, False)
    }  # fmt: skip
    for key, tokens in texts.items():
        np.testing.assert_array_equal(tokens, texts["torch", True], err_msg=str(key))


@few_examples(2)
@given(model_configs(), seeds, st.data())
def test_with_a_stream_per_row_each_row_is_generated_as_if_alone(config, seed, data):
    """A batch generated with row_generators gives each row the tokens that row gets generated alone with its
    own stream, in both backends, past block_size too, with and without the KV cache; so does one prompt row
    continued by B samples (it runs once, and its cache is copied to the B rows). float64, exact, as in the
    test above (the batched forward pass computes each row's logits with the same sums)."""
    torch_model, numpy_model = tiny_models(config, random_params(config, seed), "float64")
    B = data.draw(st.integers(2, 3))
    prompt = np.random.default_rng(seed).integers(config.vocab_size, size=(B, data.draw(st.integers(1, 8))))
    options = dict(max_new_tokens=data.draw(st.integers(1, config.block_size + 4)), temperature=1.0,
                   top_k=data.draw(st.none() | st.integers(1, config.vocab_size)), top_p=data.draw(top_ps))
    options["use_cache"] = data.draw(st.booleans())
    sample_seed = data.draw(seeds)
    for model in (torch_model, numpy_model):
        together = model.generate(prompt, rng=row_generators(sample_seed, range(B)), **options)
        shared = model.generate(prompt[:1], rng=row_generators(sample_seed, range(B)), **options)
        assert together.shape == shared.shape == (B, prompt.shape[1] + options["max_new_tokens"])
        for b in range(B):
            alone = model.generate(prompt[b : b + 1], rng=row_generators(sample_seed, [b]), **options)
            np.testing.assert_array_equal(together[b : b + 1], alone, err_msg=f"row {b}")
            alone = model.generate(prompt[:1], rng=row_generators(sample_seed, [b]), **options)
            np.testing.assert_array_equal(shared[b : b + 1], alone, err_msg=f"row {b} of the shared prompt")


# --- the distribution: a chi-square goodness-of-fit test with a fixed seed ------------------------------------

N_DRAWS = 20_000
FIT_LOGITS = np.array([1.2, -0.3, 0.8, 2.0, 0.1, -1.5, 1.9, 0.5, -0.7, 1.0])  # 10 tokens, all probabilities distinct


def chi_square_p_value(statistic, dof):
    """P(chi^2_dof >= statistic): the chi-square survival function is the regularised upper incomplete gamma
    function Q(dof / 2, statistic / 2), which torch provides (scipy is not a dependency). It reproduces the
    tables: 27.877 with 9 degrees of freedom -> 0.0010, 16.919 -> 0.050."""
    a, x = torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(a, x))


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, None), (0.5, None, None), (2.0, None, None), (1.0, 4, None), (1.0, None, 0.8), (1.5, 6, 0.9)],
)
def test_draw_frequencies_match_the_probabilities(temperature, top_k, top_p):
    """N_DRAWS = 20000 draws with seed 0 from FIT_LOGITS (float32, as the backends hand them over). Tokens outside
    the support (top-k, nucleus) are never drawn (exact), and the counts inside fit the exact probabilities:
    Pearson's chi-square with (support - 1) degrees of freedom has a p-value > 1e-3. The seed is fixed, so the
    outcome is deterministic; a correct sampler fails this for 0.1% of seeds, and the seed is not tuned.
    Every expected count is >= 5, the usual condition for Pearson's chi-square approximation. Power: a
    probability off by 0.01 (e.g. a wrong temperature or a mis-normalised nucleus) adds N * 0.01^2 / p >= 2
    per token to the statistic, and a few such tokens push the p-value far below 1e-3."""
    logits = np.tile(FIT_LOGITS.astype(np.float32), (N_DRAWS, 1))  # (N, V)
    tokens = sample_next(logits, np.random.default_rng(0), temperature=temperature, top_k=top_k, top_p=top_p)
    counts = np.bincount(tokens, minlength=len(FIT_LOGITS))
    p = probabilities(FIT_LOGITS[None].astype(np.float32), temperature, top_k, top_p)[0]
    support = p > 0
    assert np.all(counts[~support] == 0)
    expected = N_DRAWS * p[support]
    assert expected.min() >= 5 and support.sum() >= 2
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    p_value = chi_square_p_value(statistic, support.sum() - 1)
    assert p_value > 1e-3, f"chi-square {statistic:.1f} (p = {p_value:.2g}), counts {counts}, expected {expected}"
