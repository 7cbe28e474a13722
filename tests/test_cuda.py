"""The torch backend on a CUDA GPU: eager and compiled into a CUDA graph, against the CPU in float64.

Skipped where torch sees no CUDA device (CI and the development machine); run on a lent GPU by
benchmarks/gpu_check.sh, with the GPU benchmark and compare.py --device cuda. Whole compiled generations on the
GPU (one CUDA graph past block_size) are tests/test_compiled_decode_step.py's, run on the CPU and on CUDA.

Tolerances, on the random checkpoints of conftest.py (logits of magnitude ~7):
- float32: 2e-4 on logits, the project's float32 bound (tests/test_torch_model.py). PyTorch computes float32
  products in float32 on CUDA unless TF32 is switched on, which the project never does (asserted below);
  TF32's 10-bit mantissa would miss this bound by ~100x.
- float64: 1e-9, rounding only.
- bfloat16: a relative error ||out - ref|| / ||ref|| of at most 3e-2. The CPU's bfloat16 model lands at
  1.1-1.4e-2 on the same checkpoints (measured); it comes from rounding weights and activations to 8-bit
  mantissas, which a GPU does the same way.
"""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import compare
import sample
from gpt2_torch import GPT
from weights.sampling import row_generators

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

TOLERANCE = {"float64": 1e-9, "float32": 2e-4}  # max abs on logits
BFLOAT16_RELATIVE = 3e-2


@pytest.fixture
def fresh_compiler():
    """Count from zero, and leave no compiled code behind. (Inductor's on-disk cache stays: the kernels compiled
    for one test serve the next, which saves the lent GPU's time.)"""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def prompt(checkpoint, rows, length, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, checkpoint.vocab_size, size=(rows, length)))


def assert_close(out, ref, dtype):
    out, ref = out.double().cpu(), ref.double().cpu()
    if dtype == "bfloat16":
        assert ((out - ref).norm() / ref.norm()).item() <= BFLOAT16_RELATIVE
    else:
        assert (out - ref).abs().max().item() <= TOLERANCE[dtype]  # NaN fails too


def test_float32_products_stay_float32():
    assert not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_cuda_activations_match_the_cpu_float64_model(checkpoint, dtype):
    """Every activation of the trace (the eager forward, SDPA on the GPU), each checkpoint shape, to the tolerances
    above, as the CPU's float32 model is held (tests/test_torch_model.py); compare.py on the H200 measured at
    most 1e-5 on any activation in float32 (GPT-2 XL's shape)."""
    idx = prompt(checkpoint, 2, 20)
    reference = GPT.from_pretrained(checkpoint.path, "cpu", "float64").trace(idx)
    activations = GPT.from_pretrained(checkpoint.path, "cuda", dtype).trace(idx)
    assert list(activations) == list(reference)
    assert activations["logits"].device.type == "cuda"
    for name, ref in reference.items():
        out = activations[name].double().cpu()
        if dtype == "bfloat16":
            assert ((out - ref).norm() / ref.norm()).item() <= BFLOAT16_RELATIVE, name
        else:
            assert (out - ref).abs().max().item() <= TOLERANCE[dtype], name


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_the_compiled_step_is_a_cuda_graph_with_the_eager_logits_at_every_position(small_checkpoint, fresh_compiler,
                                                                                   mode):
    """decode_step compiled (Inductor's kernels in a CUDA graph of compiled_step.py's, or torch.compile's own CUDA
    graphs with mode="reduce-overhead") against the eager forward, position by position, B = 3, over the whole
    cache with the positions after pos masked: one graph, and each step a replay (cudaGraphLaunch in the
    profile), not a launch per kernel."""
    options = {"mode": mode} if mode else {}
    model = GPT.from_pretrained(small_checkpoint.path, "cuda").compile_decode_step(**options)
    idx = prompt(small_checkpoint, 3, 40, seed=3).cuda()
    with torch.inference_mode():
        expected = model.trace(idx)["logits"]  # (3, 40, V), no cache
        model.allocate_kv_cache(3, 64)
        model(idx[:, :8], 0)  # prefill, eager
        for t in range(8, 40):
            logits = model.compiled_decode_step(idx[:, t : t + 1], torch.tensor([t], device="cuda"))  # (3, V)
            assert logits.dtype == torch.float32 and logits.shape == (3, small_checkpoint.vocab_size)
            assert_close(logits, expected[:, t], "float32")
            if t == 39:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                        torch.profiler.ProfilerActivity.CUDA]) as profile:
                    model.compiled_decode_step(idx[:, t : t + 1], torch.tensor([t], device="cuda"))
                    torch.cuda.synchronize()
    assert counters["stats"]["unique_graphs"] == 1
    if mode:
        assert counters["inductor"]["cudagraph_skips"] == 0
    else:
        assert len(model.compiled_decode_step.graphs) == 1  # captured once, replayed 31 times
        assert logits.device.type == "cpu" and logits.is_pinned()  # the logits come back with the replay
    assert "cudaGraphLaunch" in {event.name for event in profile.events()}


def test_a_samples_text_does_not_depend_on_its_batch_on_the_gpu(small_checkpoint, fresh_compiler):
    """float64, compiled: samples 0-2 drawn as one batch of 3 are the samples drawn one at a time (a batch of 1,
    its own graph), as sample.py --batch_size promises; in float64 the two differ by ~1e-15 and no token flips."""
    model = GPT.from_pretrained(small_checkpoint.path, "cuda", "float64").compile_decode_step()
    idx = prompt(small_checkpoint, 1, 8, seed=6).numpy()
    together = model.generate(idx, 40, temperature=1.0, top_k=50, rng=row_generators(7, range(3)))
    for i in range(3):
        alone = model.generate(idx, 40, temperature=1.0, top_k=50, rng=row_generators(7, [i]))
        np.testing.assert_array_equal(together[i : i + 1], alone)
    assert len({tuple(row) for row in together.tolist()}) == 3  # three different samples, not one three times


def test_sample_py_on_the_gpu_prints_the_cpus_text(small_checkpoint, capsys, fresh_compiler):
    """sample.py --device cuda --compile in float32 prints the eager CPU's samples (near ties aside, as above),
    and --dtype bfloat16 --compile prints as many samples, each followed by the separator."""
    args = ["--init-from", small_checkpoint.path, "--start", "Hello, my name is", "--max_new_tokens", 30,
            "--num_samples", 3, "--top_k", 40, "--seed", 5]
    args = [str(a) for a in args]
    sample.main(args)
    cpu = capsys.readouterr().out
    sample.main([*args, "--device", "cuda", "--compile"])
    assert capsys.readouterr().out == cpu
    sample.main([*args, "--device", "cuda", "--compile", "--dtype", "bfloat16"])
    out = capsys.readouterr().out
    assert out.count("\n---------------\n") == 3 and out.startswith("Hello, my name is")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compare_py_on_the_gpu_passes(small_checkpoint, capsys, dtype):
    """compare.py --device cuda: the torch backend on the GPU, NumPy and the float64 reference on the CPU, every
    activation within compare.py's tolerances for the dtype; the header says TF32 is off."""
    code = compare.main(["--init-from", str(small_checkpoint.path), "--device", "cuda", "--dtype", dtype])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cuda" in out
    assert dtype != "float32" or "TF32 off" in out
