"""Whole forward passes of the random GPT-2 124M, for each backend: prompts (prefill) and decoding steps.

A prefill runs T tokens into an empty KV cache (the first call of generate); a decoding step runs one token
at position `context` of a cache that holds `context` positions (every later call). Both return the logits
of the last position only, as generate needs. The last benchmark is the whole decoding loop with sampling.
"""

import numpy as np
import pytest

from benchmarks.common import prompt


@pytest.mark.parametrize("T", [128, 1024])
def test_prefill(benchmark, backend, T):
    name, dtype, model, to_input = backend
    benchmark.group = f"prefill, T={T}"
    model.allocate_kv_cache(1)
    benchmark(model, to_input(prompt(T)), 0)


@pytest.mark.parametrize("context", [128, 1000])
def test_decode_step(benchmark, backend, context):
    name, dtype, model, to_input = backend
    benchmark.group = f"decode step, context {context}"
    model.allocate_kv_cache(1)
    model(to_input(prompt(context)), 0)  # fill the cache once; each step then rewrites position `context`
    benchmark(model, to_input(prompt(1, seed=1)), context)


def test_generate(benchmark, backend):
    """8-token prompt, 32 new tokens, top_k 200, temperature 0.8: the report's setting, shorter."""
    name, dtype, model, to_input = backend
    benchmark.group = "generate 32 tokens"

    def generate():
        return model.generate(prompt(8), 32, temperature=0.8, top_k=200, rng=np.random.default_rng(0))

    benchmark(generate)
