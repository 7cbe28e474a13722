"""The pieces of one transformer block, for each backend: LayerNorm, attention, MLP, the whole block; and the
lm_head.

Each at T = 1 (one decoding step, attending to a KV cache of 128 positions) and T = 128 (a prompt).
Layer 0 of the random GPT-2 124M; its weights are as large as every other layer's.
"""

import numpy as np
import pytest
import torch

from gpt2_numpy import causal_mask

CONTEXT = 128  # keys already in the cache when one new token is decoded


def mode(T):
    """(start, mask T x S or None): a prompt starts the cache at 0; a single token continues it at CONTEXT."""
    return (0, T) if T > 1 else (CONTEXT, None)


def benchmark_with_cache(benchmark, name, model, module, x):
    """Benchmark module (layer 0's attention or block) on x (1, T, C) with a fresh KV cache of layer 0."""
    model.allocate_kv_cache(1)
    start, mask_size = mode(x.shape[1])
    T = x.shape[1]
    if name == "numpy":  # the NumPy forward builds the mask once per pass and hands it to every layer
        mask = causal_mask(mask_size, mask_size, model.dtype) if mask_size else None
        benchmark(module, x, model.kv_cache[0], np.arange(start, start + T), start + T, mask)
    else:  # no mask: sdpa's own causal mask for the prompt, none for one query
        benchmark(module, x, model.kv_cache[0], torch.arange(start, start + T), start + T)


@pytest.mark.parametrize("T", [1, 128])
def test_layer_norm(benchmark, backend, hidden, T):
    name, dtype, model, to_input = backend
    benchmark.group = f"LayerNorm, T={T}"
    x = to_input(hidden(T))
    benchmark(model.h[0].ln_1, x)


@pytest.mark.parametrize("T", [1, 128])
def test_attention(benchmark, backend, hidden, T):
    name, dtype, model, to_input = backend
    benchmark.group = f"attention, T={T}" + (f", {CONTEXT} cached keys" if T == 1 else "")
    benchmark_with_cache(benchmark, name, model, model.h[0].attn, to_input(hidden(T)))


@pytest.mark.parametrize("T", [1, 128])
def test_mlp(benchmark, backend, hidden, T):
    name, dtype, model, to_input = backend
    benchmark.group = f"MLP, T={T}"
    benchmark(model.h[0].mlp, to_input(hidden(T)))


@pytest.mark.parametrize("T", [1, 128])
def test_block(benchmark, backend, hidden, T):
    name, dtype, model, to_input = backend
    benchmark.group = f"block, T={T}" + (f", {CONTEXT} cached keys" if T == 1 else "")
    benchmark_with_cache(benchmark, name, model, model.h[0], to_input(hidden(T)))


def test_lm_head(benchmark, backend, hidden):
    """The tied lm_head on one position: wte (154 MB in float32), far larger than the caches, read from memory
    on every call as in decoding, unlike a block's 28 MB, which stays in the 32 MB L3 cache between calls."""
    name, dtype, model, to_input = backend
    benchmark.group = "lm_head, one position"
    benchmark(model.lm_head, to_input(hidden(1)))
