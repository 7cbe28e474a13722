"""--compile: the static-shape decode step, compiled whole by torch.compile (Inductor's C++ on the CPU).

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

from gpt2_torch import GPT

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture
def fresh_compiler(tmp_path, monkeypatch):
    """Compile from scratch (as on a fresh machine), count from zero, and leave no compiled code behind."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_one_graph_serves_every_step_of_every_generation(odd_checkpoint, fresh_compiler):
    """A generation of 10 + 60 tokens passes block_size (48) of "odd", so the window slides, and a second
    generation follows with the same cache shape. error_on_recompile turns any recompilation into an error;
    fullgraph=True does the same for a graph break; the counters confirm one graph, no break."""
    model = GPT.from_pretrained(odd_checkpoint.path).compile_decode_step()
    eager = GPT.from_pretrained(odd_checkpoint.path)
    prompt = np.random.default_rng(0).integers(0, odd_checkpoint.vocab_size, size=(2, 10))  # (B, T)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (1, 2):
            compiled = model.generate(prompt, 60, temperature=0.8, top_k=20, rng=np.random.default_rng(seed))
            expected = eager.generate(prompt, 60, temperature=0.8, top_k=20, rng=np.random.default_rng(seed))
            np.testing.assert_array_equal(compiled, expected)
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["graph_break"].values()) == 0


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
