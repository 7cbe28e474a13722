"""Batched sampling: --num_samples N drawn in batches, sample i's text fixed by (seed, i) alone.

Sample i draws from its own random stream (weights.sampling.row_generators), and its logits in a batch are its
logits alone up to rounding, so its text must not depend on N, on --batch_size or on the backend. Exactly so in
float64 (the rows' logits agree to ~1e-14, far inside any decision); in float32 a batched product may round
differently from a one-row product (~1e-6), which can flip a draw that falls that close to a CDF step (see the
README's "Batched sampling" for the measured rate), so float32 is checked on seeds with no such near-tie.
The logits themselves are checked against each row's own: float32 within 2e-4 and float64 within 1e-9, the
bounds of tests/test_torch_model.py (rounding differences are ~1e-6 and ~1e-14; a real mistake, a row reading
another row's cache, say, moves logits by O(1)).
"""

import numpy as np
import pytest

import gpt2_numpy
import gpt2_torch
import weights
from tests.test_sample_cli import SEPARATOR, run_main, run_on_terminal, split_samples, start_cli
from weights.sampling import default_batch_size, row_generators

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TOLERANCE = {"float32": 2e-4, "float64": 1e-9}  # see the module docstring


def load(backend, checkpoint, dtype):
    module = gpt2_torch if backend == "torch" else gpt2_numpy
    return module.GPT.from_pretrained(checkpoint.path, dtype=dtype)


# --- sample.py: the text of sample i ------------------------------------------------------------------------

def samples(capsys, checkpoint, backend, dtype, num_samples, batch_size=None, seed=1337):
    args = ["--init-from", checkpoint.path, "--backend", backend, "--dtype", dtype, "--start", "Once upon a time",
            "--num_samples", num_samples, "--max_new_tokens", 24, "--seed", seed]
    if batch_size:
        args += ["--batch_size", batch_size]
    return split_samples(run_main(capsys, *args))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sample_i_is_the_same_text_whatever_the_batch_and_the_backend(small_checkpoint, dtype, capsys):
    """--num_samples 8 with --batch_size 1, 3 (batches of 3, 3, 2) and the default (all 8 at once), on both
    backends, prints 8 identical lists of texts; --num_samples 1 and 3 print its first 1 and 3. The samples
    differ from each other (8 streams, not one stream 8 times)."""
    expected = samples(capsys, small_checkpoint, "torch", dtype, 8, batch_size=1)
    assert len(expected) == 8 and len(set(expected)) == 8
    for backend in ("torch", "numpy"):
        for batch_size in (1, 3, None):
            assert samples(capsys, small_checkpoint, backend, dtype, 8, batch_size) == expected, (backend, batch_size)
        assert samples(capsys, small_checkpoint, backend, dtype, 3) == expected[:3], backend
        assert samples(capsys, small_checkpoint, backend, dtype, 1) == expected[:1], backend


def test_another_seed_gives_other_texts(small_checkpoint, capsys):
    first = samples(capsys, small_checkpoint, "numpy", "float32", 2)
    assert set(samples(capsys, small_checkpoint, "numpy", "float32", 2, seed=7)).isdisjoint(first)


# --- the logits of a batch ------------------------------------------------------------------------------------

def recorded_logits(model, monkeypatch, prompt, rngs, max_new_tokens):
    """The logits (B, V) every step of model.generate hands to the sampler, stacked: (steps, B, V), and the tokens."""
    seen = []
    sample_next = weights.sampling.sample_next

    def recording(logits, *args):
        seen.append(np.array(logits))
        return sample_next(logits, *args)

    monkeypatch.setattr(weights.sampling, "sample_next", recording)
    tokens = model.generate(prompt, max_new_tokens, temperature=1.0, top_k=50, rng=rngs)
    monkeypatch.undo()
    return np.stack(seen), tokens


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_logits_are_each_rows_own(odd_checkpoint, backend, dtype, monkeypatch):
    """On "odd" (block_size 48), 10 prompt tokens and 50 new ones (so the window slides for the last 11 steps),
    3 samples: of one shared prompt row (it runs once, and the rows diverge from the first draw) and of 3
    different prompts. Each row's logits at every step are those of the row generated alone, within
    TOLERANCE[dtype], and so are its tokens."""
    model = load(backend, odd_checkpoint, dtype)
    prompts = np.random.default_rng(11).integers(0, odd_checkpoint.vocab_size, size=(3, 10))  # (3, 10)
    for prompt in (prompts[:1], prompts):
        together, tokens = recorded_logits(model, monkeypatch, prompt, row_generators(5, range(3)), 50)
        assert together.shape == (50, 3, odd_checkpoint.vocab_size)
        assert len({tuple(row) for row in tokens[:, 10:]}) == 3  # the rows did diverge
        for b in range(3):
            row_prompt = prompt[b : b + 1] if len(prompt) == 3 else prompt
            alone, row_tokens = recorded_logits(model, monkeypatch, row_prompt, row_generators(5, [b]), 50)
            np.testing.assert_array_equal(row_tokens[0], tokens[b], err_msg=f"row {b}")
            assert np.abs(alone[:, 0] - together[:, b]).max() <= TOLERANCE[dtype], f"row {b}"


def test_a_batch_of_one_prompt_needs_generators_for_each_row(odd_checkpoint):
    model = load("numpy", odd_checkpoint, "float32")
    with pytest.raises(ValueError, match="2 generators for 3 prompt rows"):
        model.generate(np.zeros((3, 4), dtype=np.int64), 2, rng=row_generators(0, range(2)))


# --- the default batch size ------------------------------------------------------------------------------------

def test_the_default_batch_keeps_the_kv_cache_within_half_the_weights():
    """All samples at once, unless the batch's cache (2 x n_layer x n_embd values per position per sample)
    would pass half the number of weights (GPT-2 124M: 124,439,808 weights, so 62.2M values, and 2.36M per
    sample of a 128-position cache: 26 samples)."""
    gpt2 = weights.preset("gpt2")
    n_weights = sum(int(np.prod(s)) for s in weights.parameter_shapes(gpt2).values())
    assert n_weights == 124_439_808  # GPT-2 124M, wte counted once (the lm_head is tied to it)
    assert default_batch_size(100, gpt2, 128) == 26
    assert default_batch_size(100, gpt2, 1024) == 3
    assert default_batch_size(5, gpt2, 128) == 5  # all of them, when they fit
    for positions in (64, 128, 1024):
        b = default_batch_size(1000, gpt2, positions)
        assert 2 * gpt2.n_layer * gpt2.n_embd * positions * b <= n_weights / 2
        assert 2 * gpt2.n_layer * gpt2.n_embd * positions * (b + 1) > n_weights / 2
    tiny = weights.GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=4)
    assert default_batch_size(4, tiny, 64) == 1  # a cache larger than the weights: one sample at a time


# --- sample.py's output on a pipe and on a terminal ---------------------------------------------------------

def test_batches_print_in_order_on_a_pipe_and_on_a_terminal(small_checkpoint, capsys):
    """5 samples in batches of 2 (2, 2, 1) from real processes: on a pipe, and on a pseudo-terminal, where the
    first sample of each batch is printed as it grows. Both print the 5 samples in index order, each followed
    by the separator line, and they are the texts of --batch_size 1 (run in-process)."""
    common = ["--init-from", small_checkpoint.path, "--backend", "numpy", "--start", "Dear Anna,", "--num_samples", 5,
              "--max_new_tokens", 30]
    piped = start_cli(*common, "--batch_size", 2)
    code, terminal, err = run_on_terminal(*common, "--batch_size", 2)
    assert code == 0 and err == "", err
    out, err = piped.communicate(timeout=120)
    assert piped.returncode == 0 and err == "", err
    one_by_one = run_main(capsys, *common, "--batch_size", 1)
    assert out == terminal == one_by_one
    texts = split_samples(out)
    assert len(texts) == 5 and out.count(SEPARATOR) == 5 and all(t.startswith("Dear Anna,") for t in texts)
