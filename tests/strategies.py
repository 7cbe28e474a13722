"""Hypothesis strategies and helpers shared by the property tests (tests/test_prop_*.py).

Hypothesis chooses the shapes, the dtype, the scale of the values and a seed; the values themselves come
from a NumPy generator seeded with it. So examples shrink to small shapes and plain scales, and since the
entries are Gaussian, each test can derive its tolerance from the dtype's eps and the values' magnitudes.
Shapes stay small (T <= 16, C <= 64): the properties do not depend on size, and examples must be cheap.
"""

import contextlib
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st

import weights
from gpt2_numpy.model import GPT as NumpyGPT
from gpt2_torch.model import GPT as TorchGPT
from weights import GPTConfig

batch_sizes = st.integers(1, 3)
seq_lens = st.integers(1, 16)
head_counts = st.integers(1, 4)
head_sizes = st.integers(1, 16)
widths = st.integers(1, 64)  # embedding width C of a LayerNorm row
dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)
# Magnitudes from 1e-3 to 1e4, log-uniform; shrinks towards 1.
scales = st.floats(-3, 4).map(lambda exponent: 10.0**exponent)


def eps(dtype) -> float:
    """Machine epsilon of a NumPy dtype: one rounded operation has a relative error of at most eps / 2."""
    return float(np.finfo(dtype).eps)


def log2_ceil(n: int) -> int:
    """Depth of a pairwise (NumPy) or cascade (torch) sum of n terms: its rounding error grows like this, not n."""
    return max(1, math.ceil(math.log2(n)))


@st.composite
def gaussian_arrays(draw, shape, dtype, scale=scales):
    """An array of the given shape and dtype, N(0, scale^2) entries from a hypothesis-drawn seed."""
    rng = np.random.default_rng(draw(seeds))
    return (rng.standard_normal(shape) * draw(scale)).astype(dtype)


@st.composite
def model_configs(draw, max_layers=2, bias=st.booleans()):
    """A tiny GPTConfig: 1-2 layers, 1-4 heads of size 1-8, vocabulary 1-40, context 1-16 (bias on or off)."""
    n_head, head_size = draw(head_counts), draw(st.integers(1, 8))
    return GPTConfig(
        block_size=draw(st.integers(1, 16)), vocab_size=draw(st.integers(1, 40)),
        n_layer=draw(st.integers(1, max_layers)), n_head=n_head, n_embd=n_head * head_size, bias=draw(bias),
    )  # fmt: skip


def random_params(config: GPTConfig, seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """Canonical parameters (weights.parameter_shapes) of order-1 activations: matrices N(0, 1/fan_in),
    LayerNorm gains around 1, biases and embeddings of order 0.1-1. Nothing is left at a trivial init
    (unit gains, zero biases), so a dropped bias or a swapped orientation changes the outputs."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in weights.parameter_shapes(config).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            value = 1 + 0.3 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            value = 0.2 * rng.standard_normal(shape)
        elif len(shape) == 2 and not name.startswith(("wte", "wpe")):
            value = rng.standard_normal(shape) / math.sqrt(shape[0])  # (in, out): unit-variance outputs
        else:
            value = rng.standard_normal(shape)
        params[name] = value.astype(dtype)
    return params


def few_examples(divisor: int) -> settings:
    """The active profile's settings with max_examples divided by divisor (at least 3): for examples that
    write files or run whole models, so that they cost about what a cheap test costs in total."""
    return settings(max_examples=max(3, settings.default.max_examples // divisor))


def assert_within(error, tolerance, what="error"):
    """Assert |error| <= tolerance elementwise (NaN fails), naming the worst element if not."""
    error, tolerance = np.broadcast_arrays(np.abs(np.asarray(error, dtype=np.float64)), tolerance)
    beyond = ~(error <= tolerance)
    if beyond.any():
        ratio = np.where(beyond, np.nan_to_num(error / tolerance, nan=np.inf), 0)
        worst = np.unravel_index(np.argmax(ratio), error.shape)
        raise AssertionError(
            f"{what}: {beyond.sum()} of {error.size} elements beyond the tolerance; "
            f"worst at {tuple(map(int, worst))}: |error| {error[worst]:.3g} > tolerance {tolerance[worst]:.3g}"
        )


@st.composite
def chunkings(draw, length):
    """Sizes of consecutive chunks that add up to length: how a prompt is fed through a KV cache."""
    cuts = draw(st.sets(st.integers(1, length - 1), max_size=length - 1)) if length > 1 else set()
    bounds = [0, *sorted(cuts), length]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def tiny_models(config: GPTConfig, params: dict[str, np.ndarray], dtype="float64"):
    """(torch GPT, NumPy GPT) with these parameters, each built by its own from_pretrained from one
    .safetensors file written by weights.save: the path every real model takes."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.safetensors"
        weights.save(path, config, {name: value.astype(dtype) for name, value in params.items()})
        # NumPy memory-maps the file; the mapping outlives the directory's removal (POSIX unlink semantics).
        return TorchGPT.from_pretrained(path, dtype=dtype), NumpyGPT.from_pretrained(path, dtype=dtype)


@contextlib.contextmanager
def torch_threads(n):
    """Run torch on n threads, then restore the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_torch_thread():
    """Run torch on one thread. The examples are tiny, so a second thread brings nothing but a barrier per
    operation, and on a loaded 2-core machine that barrier waits out a scheduler slice: ~16 ms per nn.Linear
    instead of ~7 us, measured."""
    return torch_threads(1)


# Decoding settings under which the model-level generation tests run (both backends share them).
SAMPLING = {
    "greedy": dict(temperature=0.0),
    "sampled": dict(temperature=1.0),
    "top_k_top_p": dict(temperature=0.8, top_k=200, top_p=0.95),
}
