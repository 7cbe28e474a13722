"""The NumPy backend against transformers and against the PyTorch backend; its dtype, memory and imports.

Tolerances are those of test_torch_model.py and for the same reasons: float32 implementations that sum
the same products in different orders agree to ~1e-5 on these checkpoints (activations of order 1, logits
of order 10; measured: <= 1e-5 at the logits, <= 2.5e-5 in any layer), so 2e-4 has 8x headroom or more;
float64 ones to ~1e-14 (measured: <= 5e-14), so 1e-9 is wide and still five orders below any real
mistake (which moves these logits by 1e-2 or more).
"""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gpt2_numpy
import gpt2_torch
import weights
from tests.strategies import SAMPLING

TOLERANCE = {"float32": 2e-4, "float64": 1e-9}  # see the module docstring
REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@functools.cache
def load(path, dtype="float32") -> gpt2_numpy.GPT:
    return gpt2_numpy.GPT.from_pretrained(path, dtype=dtype)


@functools.cache
def load_torch(path, dtype="float32") -> gpt2_torch.GPT:
    return gpt2_torch.GPT.from_pretrained(path, dtype=dtype)


def random_ids(checkpoint, B, T, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, checkpoint.vocab_size, size=(B, T))  # (B, T)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# --- the forward pass against transformers and the torch backend -------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logits_equal_transformers_at_every_position(checkpoint, dtype):
    idx = random_ids(checkpoint, 2, checkpoint.block_size)  # (2, block_size): every position embedding is used
    logits = load(checkpoint.path, dtype).trace(idx)["logits"]
    with torch.no_grad():
        expected = checkpoint.hf_model(dtype)(torch.from_numpy(idx)).logits.numpy()
    assert logits.shape == expected.shape == (2, checkpoint.block_size, checkpoint.vocab_size)
    assert max_diff(logits, expected) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trace_equals_the_torch_trace_layer_by_layer(checkpoint, dtype):
    idx = random_ids(checkpoint, 2, checkpoint.block_size, seed=1)
    ours, theirs = load(checkpoint.path, dtype).trace(idx), load_torch(checkpoint.path, dtype).trace(idx)
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].shape == tuple(theirs[name].shape), name
        assert max_diff(ours[name], theirs[name].numpy()) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_activation_keeps_the_model_dtype(checkpoint, dtype):
    """No silent promotion: a float64 scalar or mask slipped into float32 math would turn activations float64."""
    model, idx = load(checkpoint.path, dtype), random_ids(checkpoint, 2, 9, seed=2)
    trace = model.trace(idx)
    assert {name: a.dtype for name, a in trace.items()} == {name: np.dtype(dtype) for name in trace}
    assert model(idx).dtype == np.dtype(dtype)
    model.allocate_kv_cache(2)
    try:
        assert model(idx[:, :5], 0).dtype == model(idx[:, 5:], 5).dtype == np.dtype(dtype)  # cached, T > 1 at start > 0
        assert model(idx[:, :1], 9).dtype == np.dtype(dtype)  # one cached decoding step (no mask)
        assert all(layer.k.dtype == layer.v.dtype == np.dtype(dtype) for layer in model.kv_cache)
    finally:
        model.kv_cache = None


def test_cached_chunks_equal_one_full_forward(checkpoint):
    """Prefill, single-token steps and multi-token chunks at start > 0 through the cache, against one uncached
    forward, in float64 (same sums, ~1e-14 apart; bound 1e-9)."""
    model, T = load(checkpoint.path, "float64"), checkpoint.block_size
    idx = random_ids(checkpoint, 2, T, seed=3)
    cuts = [0, 5, 6, 17, 18, T - 9, T]  # chunks of 5, 1, 11, 1, ..., 9 tokens, the last one filling the block
    model.allocate_kv_cache(2)
    pieces = []
    try:
        for start, end in zip(cuts[:-1], cuts[1:]):
            activations = {}
            model(idx[:, start:end], start, trace=activations)
            pieces.append(activations["logits"])  # (B, end - start, V)
    finally:
        model.kv_cache = None
    assert max_diff(np.concatenate(pieces, axis=1), model.trace(idx)["logits"]) <= 1e-9


# --- generation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", SAMPLING.values(), ids=SAMPLING.keys())
def test_cached_generation_equals_uncached(checkpoint, options):
    """Token for token, B = 2; 10 + 64 tokens pass block_size on "odd" (48) and "tall" (64): the crop path runs."""
    model, prompt = load(checkpoint.path), random_ids(checkpoint, 2, 10, seed=4)
    cached = model.generate(prompt, 64, rng=np.random.default_rng(5), use_cache=True, **options)
    uncached = model.generate(prompt, 64, rng=np.random.default_rng(5), use_cache=False, **options)
    assert cached.shape == (2, 74)
    np.testing.assert_array_equal(cached[:, :10], prompt)
    np.testing.assert_array_equal(cached, uncached)
    assert model.kv_cache is None  # freed after generation


@pytest.mark.parametrize("dtype, options", [("float64", options) for options in SAMPLING.values()] + [("float32", SAMPLING["greedy"])],
                         ids=[f"float64-{name}" for name in SAMPLING] + ["float32-greedy"])
def test_generation_past_block_size_equals_the_torch_backend(odd_checkpoint, dtype, options):
    """The same tokens from both backends, B = 2, through 26 steps of cropping on "odd" (block_size 48).

    Both feed their logits to the one sampling algorithm with the same generator, so the tokens can only
    differ where two candidates straddle a decision within the backends' logit difference. Sampling is
    compared in float64, where that difference is ~1e-14 and a straddle practically impossible: in float32
    (~1e-5 apart) it was measured at 4 flips in about 79,000 sampled tokens (about one in 20,000) on these
    checkpoints, and a straddle at the top_p cut does happen with these very prompts. Greedy decoding in float32 only flips where the two
    best logits are within ~1e-5 (never in 28,000 measured positions). test_sample_cli.py checks float32
    sampling for its seeds."""
    prompt = random_ids(odd_checkpoint, 2, 10, seed=6)
    ours = load(odd_checkpoint.path, dtype).generate(prompt, 64, rng=np.random.default_rng(7), **options)
    theirs = load_torch(odd_checkpoint.path, dtype).generate(prompt, 64, rng=np.random.default_rng(7), **options)
    np.testing.assert_array_equal(ours, theirs)


def test_greedy_equals_transformers_generate(checkpoint):
    """temperature 0 against transformers' greedy search for 20 tokens; eos_token_id=None so that it cannot
    stop at <|endoftext|>, which the length check confirms."""
    prompt = random_ids(checkpoint, 2, 8, seed=8)
    ours = load(checkpoint.path).generate(prompt, 20, temperature=0)
    prompt_t = torch.from_numpy(prompt)
    with torch.no_grad():
        theirs = checkpoint.hf_model().generate(
            prompt_t, attention_mask=torch.ones_like(prompt_t), max_new_tokens=20, do_sample=False,
            eos_token_id=None, pad_token_id=None,
        )  # fmt: skip
    assert theirs.shape == (2, 28)
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_unsupported_dtype_is_a_clear_error(small_checkpoint):
    with pytest.raises(ValueError, match="float32 or float64, not 'bfloat16'"):
        gpt2_numpy.GPT.from_pretrained(small_checkpoint.path, dtype="bfloat16")


# --- no framework, the weights' layouts, bounded memory ---------------------------------------------------------

def run_python(code: str, *args) -> str:
    """Run code in a fresh interpreter at the repository root (one BLAS thread, see one_thread); its stdout."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


NO_FRAMEWORK = """
import sys
import numpy as np
import gpt2_numpy, weights
from weights import tokenizer, sampling

model = gpt2_numpy.GPT.from_pretrained(sys.argv[1])
ids = np.array([tokenizer.encode("Hello, my name is<|endoftext|>")])
logits = model(ids)
tokens = model.generate(ids, 3, top_k=200, rng=np.random.default_rng(0))
assert logits.shape == (1, 1, model.config.vocab_size) and tokens.shape == (1, ids.shape[1] + 3)
frameworks = ("torch", "transformers", "jax", "tensorflow")
print(sorted({name.split(".")[0] for name in sys.modules} & set(frameworks)))
"""


def test_numpy_backend_imports_no_framework(small_checkpoint):
    """Neither gpt2_numpy nor weights may pull in torch, transformers, jax or tensorflow, even indirectly:
    checked in a fresh interpreter, after loading a checkpoint and sampling from it."""
    assert run_python(NO_FRAMEWORK, small_checkpoint.path).strip() == "[]"


def file_mapping(array: np.ndarray) -> np.memmap | None:
    """The np.memmap that array is a view of (following its chain of .base), or None if it owns its memory."""
    while isinstance(array, np.ndarray):
        if isinstance(array, np.memmap):
            return array
        array = array.base
    return None


def test_float32_weights_are_memory_mapped_or_laid_out_for_their_product(small_checkpoint):
    """transformers writes float32 in GPT-2's (in, out) layout: c_attn and c_fc (out the longer side) and wpe
    are used as they lie in the file, views of it, no copy. attn.c_proj and mlp.c_proj are copied to
    (out, in) memory, wte to (n_embd, vocab_size), the lm_head's (in, out) (product_layout): each in its
    canonical shape and with the file's values."""
    model = gpt2_numpy.GPT.from_pretrained(small_checkpoint.path)
    _, params = weights.load(small_checkpoint.path)
    block = model.h[0]
    mapping = file_mapping(block.attn.c_attn.weight)
    assert mapping is not None and Path(mapping.filename).name == "model.safetensors"
    for view in [model.wpe, block.attn.c_attn.weight, block.mlp.c_fc.weight]:
        assert file_mapping(view) is mapping and np.shares_memory(view, mapping)  # a view into the one file
        assert not view.flags.writeable  # mapped read-only: a copy would be writeable
        assert view.flags.c_contiguous
    copies = {"wte.weight": model.wte, "h.0.attn.c_proj.weight": block.attn.c_proj.weight,
              "h.0.mlp.c_proj.weight": block.mlp.c_proj.weight}
    for name, copy in copies.items():
        assert file_mapping(copy) is None, name
        assert copy.T.flags.c_contiguous and not copy.flags.c_contiguous, name  # stored the other way round
        assert copy.shape == params[name].shape and np.array_equal(copy, params[name]), name
        assert copy.dtype == np.float32, name


@pytest.mark.parametrize("source_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("source_order", ["C", "F", "strided"])
@pytest.mark.parametrize("name, shape, order", [
    ("wte.weight", (50, 8), "F"),  # vocab_size > n_embd: stored (n_embd, vocab_size) for the lm_head
    ("wte.weight", (8, 8), "C"),  # square (out, in): the lm_head's out is vocab_size, wte's first axis
    ("h.0.attn.c_attn.weight", (8, 24), "C"),  # (in, out), out the longer side
    ("h.0.attn.c_proj.weight", (8, 8), "F"),  # square: (out, in)
    ("h.0.mlp.c_proj.weight", (32, 8), "F"),  # in the longer side: (out, in)
])
def test_product_layout_keeps_shape_and_values_in_the_chosen_order(name, shape, order, source_order, source_dtype,
                                                                   dtype, monkeypatch):
    """Whatever the source's order (C, F, a strided view) and dtype: the canonical shape, the checkpoint's
    values, the model's dtype, and the memory order of the rule, copied in slices of a few rows (the slice
    size made tiny, so that the slices and the last, shorter one are exercised)."""
    monkeypatch.setattr(gpt2_numpy.model, "COPY_SLICE_BYTES", 3 * shape[1] * np.dtype(source_dtype).itemsize)
    values = np.random.default_rng(0).standard_normal((shape[0], 2 * shape[1])).astype(source_dtype)[:, ::2]
    source = {"C": np.ascontiguousarray(values), "F": np.asfortranarray(values), "strided": values}[source_order]
    stored = gpt2_numpy.model.product_layout(name, source, dtype)
    assert stored.shape == shape and stored.dtype == dtype
    assert stored.flags[f"{order}_CONTIGUOUS"]
    assert np.array_equal(stored, values.astype(dtype))
    if source_order == order and source_dtype == dtype:
        assert stored is source  # already as the product reads it: no copy


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_linear_is_x_at_weight_plus_bias_for_any_number_of_rows(order, dtype, tolerance):
    """Linear against the product written out in float64, for 1 to 70 rows (a weight stored (out, in), F order here,
    takes weight.T @ x.T for 2 to FEW_ROWS rows), as (B, T, in) stacks, with and without a bias: the shape, the
    dtype, C-contiguous rows, and the values to rounding (relative to the product's scale, ~|x| |w| sqrt(in) = 8 here:
    float32 sums of 64 terms round to ~1e-6 of it, float64 to ~1e-15)."""
    rng = np.random.default_rng(0)
    weight = np.asarray(rng.standard_normal((64, 48)), dtype=dtype, order=order)  # canonical (in, out)
    bias = rng.standard_normal(48).astype(dtype)
    for n in [1, 2, 3, 8, 16, 63, 64, 65, 70]:
        for b in (bias, None):
            linear = gpt2_numpy.model.Linear(weight, b)
            x = rng.standard_normal((n, 1, 64)).astype(dtype)  # n sequences of one token: decoding n samples
            y = linear(x)
            expected = x.astype(np.float64) @ weight.astype(np.float64) + (0 if b is None else b)
            assert y.shape == (n, 1, 48) and y.dtype == dtype and y.flags.c_contiguous
            assert np.abs(y - expected).max() <= tolerance * 8, (n, b is None)
    assert linear.stored_out_in == (order == "F")


PEAK_RSS = """
import json, sys
import numpy as np
import gpt2_numpy, weights

def status_kib(field):  # a memory figure of this process, in KiB, from Linux's /proc
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

np.ones((256, 256), np.float32) @ np.ones((256, 256), np.float32)  # BLAS sets up its buffers: not the model's
baseline = status_kib("VmRSS")
model = gpt2_numpy.GPT.from_pretrained(sys.argv[1])
tokens = model.generate(np.arange(16)[None, :], 64, top_k=200, rng=np.random.default_rng(0))
print(json.dumps({"baseline_kib": baseline, "peak_kib": status_kib("VmHWM"), "tokens": tokens.shape[1]}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak resident set from Linux's /proc")
def test_peak_memory_to_sample_is_the_weights_plus_the_kv_cache(tmp_path):
    """Sampling 64 tokens with float32 weights needs at most 1.3x the weight bytes plus the KV cache.

    Measured in a fresh interpreter: its peak resident set (VmHWM) minus its resident set after the imports
    and one small matmul. The baseline is subtracted because the interpreter, NumPy and BLAS take tens of
    MB of their own, which would hide a copy of a small model. VmHWM rather than getrusage's ru_maxrss:
    Linux carries ru_maxrss across fork and exec, so a child of this (large) pytest process would report
    pytest's own peak; VmHWM belongs to the process image started by exec. The memory-mapped weights count once,
    as the pages of the file the model touches; a copy of them would count twice and fail (2x > 1.3x).
    The checkpoint is ~64 MB, written here, so that 30% of it stands well above the noise of the allocator.
    """
    config = weights.GPTConfig(block_size=256, vocab_size=50257, n_layer=4, n_head=4, n_embd=256)
    rng = np.random.default_rng(0)
    params = {name: (rng.standard_normal(shape, dtype=np.float32) * 0.05)
              for name, shape in weights.parameter_shapes(config).items()}
    weights.save(tmp_path / "model.safetensors", config, params)
    weight_bytes = sum(p.nbytes for p in params.values())
    hs = config.n_embd // config.n_head
    kv_cache_bytes = config.n_layer * 2 * 1 * config.n_head * config.block_size * hs * 4  # (k, v) x (B, nh, block_size, hs) float32
    report = json.loads(run_python(PEAK_RSS, tmp_path / "model.safetensors"))
    assert report["tokens"] == 16 + 64
    used = (report["peak_kib"] - report["baseline_kib"]) * 1024
    assert used <= 1.3 * weight_bytes + kv_cache_bytes, f"{used / 2**20:.1f} MiB for {weight_bytes / 2**20:.1f} MiB of weights"
