"""Property tests of LayerNorm in both backends: gpt2_numpy's `layer_norm` and gpt2_torch's `LayerNorm` module.

The tolerance, derived once here and used by every test in this file. Let C be the row width,
s = sqrt(var + eps_ln) (var the biased variance, eps_ln = 1e-5), x_hat = (x - mean) / s, eps the dtype's
machine epsilon and L = ceil(log2 C). Both backends compute x_hat with an error of at most

    tol_hat = K * eps * L * (max|x| / s + |x_hat|),    K = 4,

because (first-order rounding analysis)
- the mean is a pairwise (NumPy) or cascade (torch) sum of C terms, so it is off by <= L * eps * max|x|;
  x - mean carries that into x_hat divided by s. This term dominates when |mean| >> std, where the
  two-pass formula of both backends loses digits to cancellation;
- the variance is such a sum of C squares, relative error <= L * eps; the square root halves it, and it
  scales x_hat by (1 + L * eps / 2), an error of L * eps * |x_hat|.
K = 4 covers the single roundings of the subtraction, square, division and square root, and the float64
reference's own error (at most 2 * eps64 * (max|x| / s + |x_hat|), tiny against the float32 bound and within
K for float64). The affine step multiplies the error by |weight| and adds one rounding of |y|:
tol = tol_hat * |w| + eps * |y|. Over 3000 examples the worst error of numpy and of torch (F.layer_norm)
was 0.2 tol.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gpt2_numpy.model import layer_norm, mean
from gpt2_torch.model import LayerNorm
from tests.strategies import (
    assert_within, batch_sizes, dtypes, eps, gaussian_arrays, log2_ceil, one_torch_thread, scales, seeds, seq_lens,
    widths,
)  # fmt: skip

EPS_LN = 1e-5  # GPT-2's LayerNorm epsilon, the default of both backends
K = 4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def exact_normalised(x, eps_ln=EPS_LN):
    """(x_hat, s) in float64 with exactly rounded (math.fsum) row sums: the reference both backends must meet."""
    x64 = x.astype(np.float64)
    C = x.shape[-1]
    mean = np.apply_along_axis(math.fsum, -1, x64)[..., None] / C  # (..., 1)
    var = np.apply_along_axis(math.fsum, -1, (x64 - mean) ** 2)[..., None] / C  # (..., 1) biased variance
    s = np.sqrt(var + eps_ln)  # (..., 1)
    return (x64 - mean) / s, s


def sensitivity(x, eps_ln=EPS_LN):
    """max|x| / s + |x_hat| per element: how much a relative rounding of the inputs or sums moves x_hat."""
    x_hat, s = exact_normalised(x, eps_ln)
    return np.abs(x.astype(np.float64)).max(axis=-1, keepdims=True) / s + np.abs(x_hat)


def x_hat_tolerance(x, eps_ln=EPS_LN):
    """tol_hat of the module docstring, per element of x."""
    return K * eps(x.dtype) * log2_ceil(x.shape[-1]) * sensitivity(x, eps_ln)


def torch_layer_norm(x, weight, bias, eps_ln=EPS_LN):
    """gpt2_torch's LayerNorm module with these parameters, applied to x; returns NumPy."""
    module = LayerNorm(x.shape[-1], bias=bias is not None).to(torch.from_numpy(x).dtype)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            module.bias.copy_(torch.from_numpy(bias))
        module.eps = eps_ln
        return module(torch.from_numpy(x)).numpy()


BACKENDS = {"numpy": layer_norm, "torch": torch_layer_norm}


@st.composite
def layer_norm_inputs(draw, max_offset=1e3):
    """x (B, T, C) with rows N(offset, scale^2), |offset| up to max_offset * scale; weight; bias or None."""
    dtype = draw(dtypes)
    shape = (draw(batch_sizes), draw(seq_lens), draw(widths))
    scale = draw(scales)
    offset = draw(st.sampled_from([0.0, 1.0, -30.0]) | st.floats(-max_offset, max_offset)) * scale
    x = (draw(gaussian_arrays(shape, np.float64, st.just(scale))) + offset).astype(dtype)
    rng = np.random.default_rng(draw(seeds))
    weight = (1 + 0.3 * rng.standard_normal(shape[-1])).astype(dtype)  # gains around 1, some negative
    bias = (0.2 * rng.standard_normal(shape[-1])).astype(dtype) if draw(st.booleans()) else None
    return x, weight, bias


def affine_tolerance(x, weight, bias, y_ref):
    return x_hat_tolerance(x) * np.abs(weight) + eps(x.dtype) * np.abs(y_ref)


@given(layer_norm_inputs())
def test_layer_norm_equals_the_exact_value_and_the_other_backend(inputs):
    """Each backend (NumPy's formula, torch's F.layer_norm) within tol of the exact float64 value, and the two
    within 2 * tol of each other."""
    x, weight, bias = inputs
    x_hat, _ = exact_normalised(x)
    y_exact = x_hat * weight + (0 if bias is None else bias)
    tol = affine_tolerance(x, weight, bias, y_exact)
    y_numpy, y_torch = layer_norm(x, weight, bias), torch_layer_norm(x, weight, bias)
    for name, y in (("numpy", y_numpy), ("torch", y_torch)):
        assert y.dtype == x.dtype
        assert_within(y - y_exact, tol, f"{name} against the exact value")
    assert_within(y_numpy - y_torch, 2 * tol)


@given(layer_norm_inputs())
def test_mean_is_ndarray_mean_bit_for_bit(inputs):
    """layer_norm's `mean` (a sum divided by C, without ndarray.mean's Python wrapper) is the same computation
    as x.mean(axis=-1, keepdims=True): NumPy's pairwise sum in the array's dtype, then one division. Equal
    bits, no tolerance: a different summation order or accumulator dtype would show in the last bit."""
    x, _, _ = inputs
    assert mean(x).dtype == x.dtype
    np.testing.assert_array_equal(mean(x), x.mean(axis=-1, keepdims=True))


@given(layer_norm_inputs(), st.sampled_from(list(BACKENDS)))
def test_normalised_rows_have_zero_mean_and_unit_variance(inputs, backend):
    """With weight 1 and bias 0, each row has mean 0 and biased variance var / (var + eps_ln) (exactly 1 only
    as eps_ln / var -> 0), up to the rounding of x_hat: |mean| <= max tol_hat, and since
    var(x_hat + d) - var(x_hat) = 2 mean(x_hat d) + mean(d^2) - mean(d)^2 with mean(x_hat^2) <= 1,
    |variance error| <= 2 max tol_hat + max tol_hat^2. Row moments of the output are taken in exact (fsum) float64."""
    x, _, _ = inputs
    C = x.shape[-1]
    ones, zeros = np.ones(C, x.dtype), np.zeros(C, x.dtype)
    y = BACKENDS[backend](x, ones, zeros).astype(np.float64)
    tol_hat = x_hat_tolerance(x).max(axis=-1)  # (B, T)
    mean = np.apply_along_axis(math.fsum, -1, y) / C  # (B, T)
    var = np.apply_along_axis(math.fsum, -1, (y - mean[..., None]) ** 2) / C  # (B, T)
    _, s = exact_normalised(x)
    expected_var = 1 - EPS_LN / s[..., 0] ** 2  # var / (var + eps_ln)
    assert_within(mean, tol_hat, "row mean")
    assert_within(var - expected_var, 2 * tol_hat + tol_hat**2, "row variance")


@given(layer_norm_inputs(max_offset=10), st.floats(-1e3, 1e3), st.sampled_from(list(BACKENDS)))
def test_layer_norm_is_invariant_to_adding_a_constant(inputs, shift, backend):
    """LN(x + c) = LN(x) exactly in real arithmetic. In floats, x + c is rounded first (<= eps/2 * |x + c| per
    element, which moves x_hat by <= eps * sensitivity(x + c)), then each side has its own tol:
    |LN(x + c) - LN(x)| <= tol(x) + tol(x + c) + eps * sensitivity(x + c) * |w|. |c| goes up to 1e3 max|x|,
    and for a large c the bound loosens exactly as much as the rounded inputs x + c lose."""
    x, weight, bias = inputs
    c = shift * float(np.abs(x).max() + 1e-30)
    shifted = (x.astype(np.float64) + c).astype(x.dtype)
    y_exact = exact_normalised(x)[0] * weight + (0 if bias is None else bias)
    rounding = eps(x.dtype) * sensitivity(shifted) * np.abs(weight)
    tol = affine_tolerance(x, weight, bias, y_exact) + affine_tolerance(shifted, weight, bias, y_exact) + rounding
    run = BACKENDS[backend]
    assert_within(run(shifted, weight, bias) - run(x, weight, bias), tol)


@given(layer_norm_inputs(max_offset=10), st.floats(-3, 3).map(lambda e: 10.0**e), st.sampled_from(list(BACKENDS)))
def test_layer_norm_is_invariant_to_scaling_up_to_eps(inputs, factor, backend):
    """For a > 0, LN(a x) = (x - mean) / sqrt(var + eps_ln / a^2): scaling is invariant except through eps_ln,
    so LN(a x, eps_ln) must equal LN(x, eps_ln / a^2) — an identity in real arithmetic, at any a (no need to
    keep var * a^2 >> eps_ln). a x is rounded once (relative eps/2 per element, moving x_hat by
    <= eps * sensitivity(x)); then each side has its own tol: the bound is their sum."""
    x, weight, bias = inputs
    scaled = (x.astype(np.float64) * factor).astype(x.dtype)
    eps_rescaled = EPS_LN / factor**2
    x_hat, _ = exact_normalised(x, eps_rescaled)
    y_exact = x_hat * weight + (0 if bias is None else bias)
    rounding = eps(x.dtype) * sensitivity(x, eps_rescaled)
    tol = (x_hat_tolerance(scaled) + x_hat_tolerance(x, eps_rescaled) + rounding) * np.abs(weight)
    tol += 2 * eps(x.dtype) * np.abs(y_exact)
    run = BACKENDS[backend]
    assert_within(run(scaled, weight, bias) - run(x, weight, bias, eps_rescaled), tol)


@st.composite
def constant_rows(draw, constant):
    dtype = draw(dtypes)
    C = draw(widths)
    x = np.full((draw(seq_lens), C), draw(constant), dtype=dtype)  # (T, C), every row the same value
    rng = np.random.default_rng(draw(seeds))
    return x, (1 + 0.3 * rng.standard_normal(C)).astype(dtype), (0.2 * rng.standard_normal(C)).astype(dtype)


# c = k * 2^e with |k| < 2^10: every partial sum of up to 64 copies is an integer below 2^16 times 2^e, exact
# even in float32 (24-bit significand), so the computed mean is exactly c.
dyadic_constants = st.builds(lambda k, e: math.ldexp(k, e), st.integers(-1023, 1023), st.integers(-20, 3))


@given(constant_rows(dyadic_constants), st.sampled_from(list(BACKENDS)))
def test_constant_rows_give_exactly_the_bias_when_their_mean_is_exact(inputs, backend):
    """A constant row has x - mean = 0, so the output is the bias, exactly (0 * w + b == b), provided the mean
    itself is computed exactly, which it is for these constants (see dyadic_constants). Zero tolerance."""
    x, weight, bias = inputs
    np.testing.assert_array_equal(BACKENDS[backend](x, weight, bias), np.broadcast_to(bias, x.shape))


@given(constant_rows(st.floats(-1e4, 1e4)), st.sampled_from(list(BACKENDS)))
def test_constant_rows_stay_finite_and_near_the_bias(inputs, backend):
    """Any constant row c, |c| <= 1e4: the output is finite, and off the bias only by the rounding of the mean.
    That mean is off by delta <= (L + 1) * eps * |c| (a sum of C copies, then a division), so the output is
    b + w * delta / sqrt(delta^2 + eps_ln), hence |y - b| <= |w| * min(1, (L + 1) eps |c| / sqrt(eps_ln)) + eps |b|.
    Note how weak that is in float32 for large c: a constant row of 12345.678 gives |y - b| = 0.3 |w| in NumPy
    (one float32 ulp of the mean over sqrt(1e-5)); torch's F.layer_norm, with a Welford mean, returns b."""
    x, weight, bias = inputs
    y = BACKENDS[backend](x, weight, bias)
    assert np.all(np.isfinite(y))
    c = float(np.abs(x).max())
    relative = min(1.0, (log2_ceil(x.shape[-1]) + 1) * eps(x.dtype) * c / math.sqrt(EPS_LN))
    tol = np.abs(weight) * relative + eps(x.dtype) * np.abs(bias)
    assert_within(y - bias, tol)
