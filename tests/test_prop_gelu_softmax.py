"""Property tests of GELU and softmax in both backends.

GELU is checked as each backend's MLP really applies it: an MLP whose c_fc and c_proj are identities (zero
biases) returns gelu(x) exactly, since multiplying by 1 and adding zeros round nothing. So "numpy-mlp" and
"torch-mlp" below are the project's MLP modules, "numpy" is gpt2_numpy's `gelu` function itself.
Softmax is gpt2_numpy's `softmax` and torch's F.softmax, which the torch backend's manual attention path uses.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.nn import functional as F

from gpt2_numpy.model import MLP as NumpyMLP
from gpt2_numpy.model import gelu, softmax
from gpt2_torch.model import MLP as TorchMLP
from tests.strategies import (
    assert_within, batch_sizes, dtypes, eps, gaussian_arrays, log2_ceil, one_torch_thread, scales,
)  # fmt: skip
from weights import GPTConfig

# sup over the reals of |tanh-form GELU - erf-form GELU|, reached at x = +-2.6989: computed in float64 with
# the two reference formulas below on a grid of step 1e-5 over [-10, 10] (beyond |x| = 6 the gap is below
# 6e-9, and it vanishes as |x| -> infinity); test_gelu_is_not_the_erf_form recomputes it.
GELU_TANH_ERF_GAP = 4.7324e-4
K = 4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def identity_mlps(C, dtype, bias):
    """Both backends' MLP with c_fc = [I 0 0 0] and c_proj = [I 0 0 0]^T: each returns gelu of its input."""
    config = GPTConfig(block_size=1, vocab_size=1, n_layer=1, n_head=1, n_embd=C, bias=bias)
    up = np.eye(C, 4 * C, dtype=dtype)  # (C, 4C) canonical (in, out)
    p = {"mlp.c_fc.weight": up, "mlp.c_proj.weight": up.T.copy()}
    if bias:
        p.update({"mlp.c_fc.bias": np.zeros(4 * C, dtype), "mlp.c_proj.bias": np.zeros(C, dtype)})
    module = TorchMLP(config).to(torch.from_numpy(up).dtype).eval()
    with torch.no_grad():
        for name, value in p.items():
            parameter = module.get_parameter(name.removeprefix("mlp."))
            parameter.copy_(torch.from_numpy(value.T))  # nn.Linear stores (out, in)
    return NumpyMLP(config, p, "mlp"), module


def run_gelu(implementation, x, bias=True):
    """gelu of a 1-D array x, as `implementation` computes it."""
    if implementation == "numpy":
        return gelu(x)
    numpy_mlp, torch_mlp = identity_mlps(x.size, x.dtype, bias)
    if implementation == "numpy-mlp":
        return numpy_mlp(x[None, None])[0, 0]
    with torch.no_grad():
        return torch_mlp(torch.from_numpy(x)[None, None])[0, 0].numpy()


GELUS = ["numpy", "numpy-mlp", "torch-mlp"]


def gelu_tanh_reference(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), element by element with Python's float64 math."""
    values = x.astype(np.float64).tolist()
    return np.array([0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))) for v in values])


def gelu_erf_reference(x):
    """The exact GELU x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), float64."""
    return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64).tolist()])


def gelu_tolerance(x, dtype):
    """Rounding of 0.5 x (1 + t), t = tanh(a), a = sqrt(2/pi) (x + 0.044715 x^3): a is off by <= 3 eps |a|, which
    moves t by (1 - t^2) 3 eps |a| <= 1.4 eps (a sech^2 a <= 0.45), t rounds by eps, 1 + t by 2 eps, and the
    product by eps |gelu|: in all <= 0.5 |x| 4.4 eps + eps |gelu| <= 3 eps (|x| + |gelu|). Note it is relative
    to |x|, not |gelu|: for x << 0, 1 + t cancels and gelu(x) ~ 0 carries an absolute error of order eps |x|.
    Times K = 4 for the implementations' tanh (torch's vectorised one is within a few ulp), plus K subnormal
    spacings, where relative precision ends (gelu(1e-45) = 5e-46 is not a float32)."""
    e, tiny = eps(dtype), float(np.finfo(dtype).smallest_subnormal)
    return K * (3 * e * (np.abs(x.astype(np.float64)) + np.abs(gelu_tanh_reference(x))) + tiny)


gelu_inputs = dtypes.flatmap(
    lambda dtype: arrays(dtype, st.integers(1, 64), elements=st.floats(-1e4, 1e4, width=np.finfo(dtype).bits))
)


@given(gelu_inputs, st.sampled_from(GELUS), st.booleans())
def test_gelu_equals_the_tanh_formula(x, implementation, bias):
    """Each implementation equals the tanh formula within gelu_tolerance(dtype) + gelu_tolerance(float64) (the float64
    reference's own rounding), for any x in [-1e4, 1e4]."""
    y = run_gelu(implementation, x, bias)
    assert y.dtype == x.dtype
    assert_within(y - gelu_tanh_reference(x), gelu_tolerance(x, x.dtype) + gelu_tolerance(x, np.float64))


@given(gelu_inputs, st.sampled_from(GELUS))
def test_gelu_stays_within_the_known_gap_of_the_erf_form(x, implementation):
    """|gelu(x) - x Phi(x)| <= GELU_TANH_ERF_GAP (4.7324e-4, the sup over the reals) plus the rounding of
    both sides (gelu_tolerance for the implementation and twice for the float64 references)."""
    tol = GELU_TANH_ERF_GAP + gelu_tolerance(x, x.dtype) + 2 * gelu_tolerance(x, np.float64)
    assert_within(run_gelu(implementation, x) - gelu_erf_reference(x), tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("implementation", GELUS)
def test_gelu_is_not_the_erf_form(implementation, dtype):
    """GPT-2 uses the tanh approximation; the exact erf form is a different function. First the constant:
    the formulas' gap, on a grid of step 1e-3 over [-10, 10] and of step 1e-6 near its peaks, is
    GELU_TANH_ERF_GAP to 1e-8. Then each implementation, at 64 points within 3.2e-4 of a peak, must show
    the gap of the formulas there within 1e-5: far above float32 rounding (~3e-7 here) and far below the
    gap itself, so the erf form, or a slightly different approximation, fails."""
    peak = 2.6989
    near_peak = np.arange(-1e-3, 1e-3, 1e-6)
    grid = np.concatenate([np.arange(-10, 10, 1e-3), peak + near_peak, -peak + near_peak])
    formula_gap = np.abs(gelu_tanh_reference(grid) - gelu_erf_reference(grid)).max()
    assert abs(formula_gap - GELU_TANH_ERF_GAP) < 1e-8
    x = np.concatenate([peak + np.arange(-16, 16) * 1e-5, -peak + np.arange(-16, 16) * 1e-5]).astype(dtype)  # (64,)
    gap = run_gelu(implementation, x) - gelu_erf_reference(x)
    assert_within(gap - (gelu_tanh_reference(x) - gelu_erf_reference(x)), 1e-5, "gap to the erf form")
    assert np.abs(gap).max() > 0.97 * GELU_TANH_ERF_GAP


# --- softmax -------------------------------------------------------------------------------------------

def torch_softmax(x):
    return F.softmax(torch.from_numpy(x), dim=-1).numpy()


SOFTMAXES = {"numpy": softmax, "torch": torch_softmax}


def exact_softmax(x):
    """float64 softmax with an exactly rounded (math.fsum) denominator; -inf entries give exactly 0."""
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / np.apply_along_axis(math.fsum, -1, e)[..., None]


def sum_tolerance(V, dtype):
    """A row of V probabilities sums to 1 within K (log2 V + 2) eps: the pairwise sum of the exponentials is
    off by <= log2 V eps relative, each quotient rounds once, and the float64 sum taken by the test adds
    nothing measurable; K = 4 for the implementations' vectorised sums and exp (a few ulp)."""
    return K * (log2_ceil(V) + 2) * eps(dtype)


def softmax_tolerance(x):
    """Per element, |computed p - exact p| <= K eps (|z| + log2 V + 3) p, z = x - max(x): the shift z rounds by
    eps/2 |z| (and a logit error d changes p relatively by <= 2 d), exp rounds once, and the sum and
    division add (log2 V + 2) eps; plus a few subnormal spacings for probabilities that underflow."""
    x64 = x.astype(np.float64)
    z = np.where(np.isfinite(x64), x64 - x64.max(axis=-1, keepdims=True), 0)  # -inf entries: p = 0, tolerance 0
    relative = K * eps(x.dtype) * (np.abs(z) + log2_ceil(x.shape[-1]) + 3)
    return relative * exact_softmax(x) + 4 * np.finfo(x.dtype).smallest_subnormal


@st.composite
def logit_rows(draw, elements=None):
    """(B, V) logits: Gaussian of a drawn scale (1e-3 .. 1e4) or, with elements, drawn entry by entry."""
    dtype = draw(dtypes)
    shape = (draw(batch_sizes), draw(st.integers(1, 300)))
    if elements is None:
        return draw(gaussian_arrays(shape, dtype, scales))
    return draw(arrays(dtype, shape, elements=elements(dtype)))


@given(logit_rows(), st.sampled_from(list(SOFTMAXES)))
def test_softmax_rows_sum_to_one_and_equal_the_definition(x, implementation):
    """Every row sums to 1 within sum_tolerance, every probability is in [0, 1] and equals the exact
    (float64, fsum) softmax within softmax_tolerance."""
    p = SOFTMAXES[implementation](x)
    assert p.dtype == x.dtype and np.all((p >= 0) & (p <= 1))
    assert_within(p.astype(np.float64).sum(axis=-1) - 1, sum_tolerance(x.shape[-1], x.dtype), "row sums")
    assert_within(p - exact_softmax(x), softmax_tolerance(x), "probabilities")


@given(logit_rows(), st.floats(-1e4, 1e4), st.sampled_from(list(SOFTMAXES)))
def test_softmax_is_invariant_to_adding_a_constant(x, c, implementation):
    """softmax(x + c) = softmax(x) in real arithmetic. Rounding x + c moves each logit by <= eps/2 M,
    M = max|x| + |c|, which changes p relatively by <= eps M; each side is within its softmax_tolerance of the
    exact value: the bound is the sum of the three (the first times K, as in softmax_tolerance)."""
    shifted = (x.astype(np.float64) + c).astype(x.dtype)
    run = SOFTMAXES[implementation]
    M = float(np.abs(x).max()) + abs(c)
    tol = softmax_tolerance(x) + softmax_tolerance(shifted) + K * eps(x.dtype) * M * exact_softmax(x)
    assert_within(run(shifted) - run(x), tol)


@given(logit_rows(lambda dtype: st.floats(-1e4, 1e4, width=np.finfo(dtype).bits)), st.sampled_from(list(SOFTMAXES)))
def test_softmax_is_finite_for_logits_up_to_1e4(x, implementation):
    """Logits anywhere in [-1e4, 1e4] (exp of which overflows even float64), drawn entry by entry (repeats,
    zeros, extremes): no inf or NaN, rows sum to 1 within sum_tolerance, and every probability equals the
    exact one within softmax_tolerance (so the largest logit keeps a probability >= 1/V)."""
    p = SOFTMAXES[implementation](x)
    assert np.all(np.isfinite(p))
    assert_within(p.astype(np.float64).sum(axis=-1) - 1, sum_tolerance(x.shape[-1], x.dtype), "row sums")
    assert_within(p - exact_softmax(x), softmax_tolerance(x), "probabilities")


@given(logit_rows(), st.data(), st.sampled_from(list(SOFTMAXES)))
def test_softmax_of_rows_with_minus_infinity(x, data, implementation):
    """Entries at -inf (never a whole row) get exactly 0 (zero tolerance); the rest is finite and equals the
    exact softmax of the finite entries within softmax_tolerance."""
    B, V = x.shape
    masked = data.draw(arrays(bool, (B, V)))
    masked[np.arange(B), data.draw(arrays(np.int64, B, elements=st.integers(0, V - 1)))] = False  # one survivor per row
    x = np.where(masked, -np.inf, x).astype(x.dtype)
    p = SOFTMAXES[implementation](x)
    assert np.all(np.isfinite(p)) and np.all(p[masked] == 0)
    assert_within(p - exact_softmax(x), softmax_tolerance(x), "probabilities")
