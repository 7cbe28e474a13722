"""--compile: the decode step, compiled whole by torch.compile (Inductor's C++ on the CPU).

What a GPU needs from it, checked here on the CPU, where Inductor compiles the same graph without CUDA graphs:
one graph for every decoding step of a generation (no graph break, no recompilation, past block_size too),
and the logits of the eager model.

Tolerance: Inductor fuses and reorders float32 operations, so logits (of order 10 on these checkpoints) move by
rounding, ~1e-6 (the model's float32 bound of 2e-4, tests/test_torch_model.py, holds with 100x headroom).
"""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from gpt2_torch import GPT, compiled_step
from weights.sampling import row_generators

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def fresh_compiler(tmp_path, monkeypatch):
    """Compile from scratch (as on a fresh machine), count from zero, and leave no compiled code behind."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))])
def test_one_graph_serves_every_step_of_every_generation(odd_checkpoint, fresh_compiler, device):
    """Generations of 10 + 60 tokens on "odd" (block_size 48): the compiled step decodes until the text fills
    block_size, then the window slides and each step is an eager pass over the window (nanoGPT's crop), and
    the text matches the eager model's throughout. Two shorter generations (a 64-position cache, not 48)
    come in between and after, and the one with a NaN left in its kept cache is unaffected (the cache is
    reset); then one prompt row continued by 2 samples. error_on_recompile makes any recompilation an error, fullgraph=True a graph break: one graph
    per cache shape, compiled once. On a GPU the same, as one CUDA graph, and the kept cache's NaN
    matters more there: the step attends over the whole cache, where a NaN left behind would make NaN logits."""
    model = GPT.from_pretrained(odd_checkpoint.path, device).compile_decode_step()
    eager = GPT.from_pretrained(odd_checkpoint.path, device)
    compiled_calls = []
    step = model.compiled_decode_step
    model.compiled_decode_step = lambda idx, pos: compiled_calls.append(int(pos)) or step(idx, pos)
    prompt = np.random.default_rng(0).integers(0, odd_checkpoint.vocab_size, size=(2, 10))  # (B, T)

    def both(n, seed):
        compiled = model.generate(prompt, n, temperature=0.8, top_k=20, rng=np.random.default_rng(seed))
        expected = eager.generate(prompt, n, temperature=0.8, top_k=20, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(compiled, expected)

    with torch._dynamo.config.patch(error_on_recompile=True):
        both(60, seed=1)
        assert compiled_calls == list(range(10, 48))  # then the window slides: eager
        both(5, seed=2)  # block_size 48 caps the cache at 48: the same shape, the same graph
        (kept,) = model.kept_kv_caches.values()
        with torch.inference_mode():  # the cache was made under generate's inference mode
            kept[0].k.fill_(torch.nan)  # as an overflow in an earlier generation could leave it
        both(60, seed=3)
        # One prompt row for 2 samples: it runs eagerly as one row, its cache is copied into the kept 2-row
        # cache, and the same graph decodes.
        compiled = model.generate(prompt[:1], 30, temperature=0.8, top_k=20, rng=row_generators(4, range(2)))
        expected = eager.generate(prompt[:1], 30, temperature=0.8, top_k=20, rng=row_generators(4, range(2)))
        np.testing.assert_array_equal(compiled, expected)
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["graph_break"].values()) == 0
    if device == "cuda":
        assert len(step.graphs) == 1  # one CUDA graph, for the one kept cache
    assert model.kv_cache is None  # the active cache is released; the kept one waits in kept_kv_caches


def test_after_a_compiled_generation_the_model_runs_without_a_cache(small_checkpoint, fresh_compiler):
    """The cache kept for the compiled step is not the active cache: a plain forward and an uncached
    generation afterwards neither read nor write it. Two cache lengths (64 and 128) alternate, each with its
    kept cache and its graph, compiled once."""
    model = GPT.from_pretrained(small_checkpoint.path).compile_decode_step()
    prompt = np.random.default_rng(1).integers(0, small_checkpoint.vocab_size, size=(1, 60))
    short = model.generate(prompt, 3, temperature=0)  # cache of 64
    model.generate(prompt, 30, temperature=0)  # cache of 128: a new shape, its own graph
    assert model.generate(prompt, 3, temperature=0).tolist() == short.tolist()  # 64 again: the first graph
    assert counters["stats"]["unique_graphs"] == 2  # a new cache for the third would have compiled a third
    uncached = model.generate(prompt, 3, temperature=0, use_cache=False)
    np.testing.assert_array_equal(uncached, short)
    with torch.inference_mode():
        logits = model(torch.from_numpy(prompt))  # no cache: the whole prompt from scratch
    assert logits.shape == (1, 1, small_checkpoint.vocab_size) and model.kv_cache is None


def test_the_compiled_step_gives_the_eager_logits_at_every_position(small_checkpoint, fresh_compiler):
    """decode_step, compiled, against the eager forward through the cache, position by position, B = 3."""
    model = GPT.from_pretrained(small_checkpoint.path).compile_decode_step()
    idx = torch.from_numpy(np.random.default_rng(3).integers(0, small_checkpoint.vocab_size, size=(3, 40)))
    with torch.inference_mode():
        expected = model.trace(idx)["logits"]  # (3, 40, V), no cache
        model.allocate_kv_cache(3, 64)
        model(idx[:, :8], 0)  # prefill, eager
        for t in range(8, 40):
            logits = model.compiled_decode_step(idx[:, t : t + 1], torch.tensor([t]))  # (3, V)
            assert (logits - expected[:, t]).abs().max().item() <= 2e-4, t
    assert counters["stats"]["unique_graphs"] == 1


def test_the_compiled_cpu_step_reads_only_the_positions_written(small_checkpoint, fresh_compiler):
    """On a CPU the compiled step attends over the pos + 1 positions written, a number read from pos inside its
    one graph. NaN in every cache position after pos leaves its logits finite and equal to the eager forward's
    at each position (a step over the whole cache would give those NaN a weight of 0, and 0 x NaN is NaN)."""
    model = GPT.from_pretrained(small_checkpoint.path).compile_decode_step()
    idx = torch.from_numpy(np.random.default_rng(5).integers(0, small_checkpoint.vocab_size, size=(2, 30)))
    with torch.inference_mode():
        expected = model.trace(idx)["logits"]  # (2, 30, V), no cache
        model.allocate_kv_cache(2, 64)
        model(idx[:, :8], 0)  # prefill, eager
        for t in range(8, 30):
            for layer in model.kv_cache:
                layer.k[:, :, t:] = torch.nan
                layer.v[:, :, t:] = torch.nan
            logits = model.compiled_decode_step(idx[:, t : t + 1], torch.tensor([t]))  # (2, V)
            assert (logits - expected[:, t]).abs().max().item() <= 2e-4, t  # NaN fails the comparison too
    assert counters["stats"]["unique_graphs"] == 1


def test_a_graph_for_the_cpu_attends_with_sdpa_only_for_a_prompt(small_checkpoint, fresh_compiler, monkeypatch):
    """One query per sequence in a graph compiled for the CPU (the decode step) attends by the math spelled out,
    which Inductor fuses (faster there: BENCHMARKS.md); a prompt in a compiled graph, and every eager pass, by
    SDPA. The graphs are recorded by a backend that runs them as they are."""
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(str(graph_module.graph))
        return graph_module.forward

    sdpa_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    model = GPT.from_pretrained(small_checkpoint.path)
    idx = torch.from_numpy(np.random.default_rng(4).integers(0, small_checkpoint.vocab_size, size=(2, 9)))
    with torch.inference_mode():
        model.allocate_kv_cache(2, 64)
        torch.compile(model, backend=record, fullgraph=True)(idx[:, :8], 0)  # a prompt of 8
        with monkeypatch.context() as patch:  # undone on leaving, fresh_compiler's setting kept
            patch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                          lambda *a, **k: sdpa_calls.append(1) or sdpa(*a, **k))
            eager = model.decode_step(idx[:, 8:], torch.tensor([8]))
        compiled = torch.compile(model.decode_step, backend=record, fullgraph=True)(idx[:, 8:], torch.tensor([8]))
    prompt_graph, step_graph = graphs
    assert "scaled_dot_product_attention" in prompt_graph
    assert "scaled_dot_product_attention" not in step_graph and "softmax" in step_graph
    assert len(sdpa_calls) == small_checkpoint.n_layer  # eagerly, SDPA in every layer
    assert (compiled - eager).abs().max().item() <= 2e-4  # the two attentions agree (the tolerance above)


def test_the_cuda_graph_step_captures_once_per_cache_and_again_once_the_weights_move(monkeypatch):
    """CUDAGraphStep's bookkeeping, on the CPU with the capture replaced by a stand-in that records it (the capture
    itself runs on a GPU: tests/test_cuda.py): one graph per cache, reused for that cache; weights at another address
    (the model moved or loaded anew) drop every graph, whose replays would read the old addresses."""
    captured = []

    class StandIn:
        def __init__(self, step, idx, pos, cache):
            captured.append(cache)
            self.step = step

        def __call__(self, idx, pos):
            return self.step(idx, pos)

    monkeypatch.setattr(compiled_step, "CapturedStep", StandIn)
    first, second = ["cache 1"], ["cache 2"]
    state = {"cache": first, "weight": torch.zeros(4)}
    step = compiled_step.CUDAGraphStep(lambda idx, pos: idx + pos, lambda: (state["cache"], state["weight"]))
    assert [step(1, 8), step(1, 9)] == [9, 10] and captured == [first]
    state["cache"] = second
    step(1, 8)
    state["cache"] = first
    step(1, 10)
    assert captured == [first, second] and len(step.graphs) == 2
    state["weight"] = torch.zeros(4)  # new memory: another address
    step(1, 11)
    assert captured == [first, second, first] and len(step.graphs) == 1
