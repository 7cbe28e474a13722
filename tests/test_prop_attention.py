"""Property tests of causal self-attention in both backends, as modules and inside the whole model.

Three implementations share each example's weights:
  numpy         gpt2_numpy's CausalSelfAttention, with the mask its GPT builds: causal_mask(T, start + T), none if T = 1
  torch-fused   gpt2_torch's CausalSelfAttention with .flash = True (F.scaled_dot_product_attention)
  torch-manual  the same module with .flash = False (q k^T, masked_fill, F.softmax, @ v)
The torch module is built by its own constructor (nn.Linear's random init, under a drawn seed, with the
query/key/value weights scaled by a drawn sharpness so attention ranges from nearly uniform to peaked);
the NumPy module gets the same weights as a parameter dict in the canonical (in, out) layout.

Tolerance (output_tolerance). Rounding errors are propagated stage by stage on absolute values, in float64:
a sum of n rounded terms is taken to be off by sqrt(n) * eps * (sum of the terms' magnitudes) — the standard
statistical model of rounding (Higham, Accuracy and Stability of Numerical Algorithms: errors of random sign
grow like sqrt(n), not n) — and exp, division and square root round once:
  q, k, v = x W + b          dq  = sqrt(C + 1) eps (|x| |W| + |b|)
  z = q . k / sqrt(hs)       dz  = (sqrt(hs) eps |q|.|k| + dq.|k| + |q|.dk) / sqrt(hs)
  p = softmax(z)             dp  = p (2 max_s dz + sqrt(S) eps + 2 eps)     (max-shift, exp, sum, division)
  y = sum_s p_s v_s          dy  = dp.|v| + p.dv + sqrt(S) eps p.|v|
  out = y W_p + b_p          dout = dy |W_p| + sqrt(C + 1) eps (|y| |W_p| + |b_p|)
times a safety factor K = 2 (the worst error seen in 1500 examples per implementation and dtype was 0.11 of
that). Each implementation is within that of the exact value and so is the float64 reference (with eps64), so
an implementation and the reference differ by <= tol(eps) + tol(eps64), and two implementations in the same
dtype by <= 2 tol(eps).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gpt2_numpy.model import CausalSelfAttention as NumpyAttention
from gpt2_numpy.model import KVCache as NumpyKVCache
from gpt2_numpy.model import causal_mask, softmax
from gpt2_torch.model import CausalSelfAttention as TorchAttention
from gpt2_torch.model import KVCache as TorchKVCache
from gpt2_torch.model import causal_mask as torch_causal_mask
from tests.strategies import (
    assert_within, batch_sizes, chunkings, dtypes, eps, few_examples, gaussian_arrays, head_counts, head_sizes,
    model_configs, one_torch_thread, random_params, seeds, seq_lens, tiny_models,
)  # fmt: skip
from weights import GPTConfig

K = 2
BLOCK_SIZE = 16
IMPLEMENTATIONS = ["numpy", "torch-fused", "torch-manual"]
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


class Attention:
    """One attention layer's weights, as both backends' modules and as float64 arrays for the reference."""

    def __init__(self, n_head, head_size, bias, dtype, seed, sharpness):
        C = n_head * head_size
        self.config = GPTConfig(block_size=BLOCK_SIZE, vocab_size=1, n_layer=1, n_head=n_head, n_embd=C, bias=bias)
        torch.manual_seed(seed)
        self.torch = TorchAttention(self.config).to(TORCH_DTYPES[dtype]).eval()
        with torch.no_grad():
            self.torch.c_attn.weight.mul_(sharpness)
        self.params = {
            f"attn.{layer}.{kind}": getattr(getattr(self.torch, layer), kind).detach().numpy().T.copy()  # (in, out)
            for layer in ("c_attn", "c_proj") for kind in ("weight", "bias")
            if getattr(getattr(self.torch, layer), kind) is not None
        }  # fmt: skip
        self.numpy = NumpyAttention(self.config, self.params, "attn")
        self.dtype = dtype

    def weights64(self, layer):
        """(W, b) of layer in float64, b = 0 when the model has no biases."""
        W = self.params[f"attn.{layer}.weight"].astype(np.float64)
        return W, self.params.get(f"attn.{layer}.bias", np.zeros(W.shape[1])).astype(np.float64)

    def run(self, implementation, x, chunks=None):
        """Outputs (B, T, C) for x (B, T, C): in one pass, or fed chunk by chunk (sizes `chunks`) through a
        KV cache that starts filled with NaN, so that reading a slot never written poisons the output."""
        B, T, C = x.shape
        chunks = chunks or [T]
        cache_shape = (B, self.config.n_head, BLOCK_SIZE, C // self.config.n_head)  # (B, nh, block_size, hs)
        outputs, start = [], 0
        if implementation == "numpy":
            cache = NumpyKVCache(cache_shape, self.dtype)
            cache.k[...], cache.v[...] = np.nan, np.nan
            for size in chunks:
                mask = causal_mask(size, start + size, self.dtype) if size > 1 else None  # as gpt2_numpy's GPT does
                pos = np.arange(start, start + size)  # (size,)
                kv = cache if len(chunks) > 1 else None
                outputs.append(self.numpy(x[:, start : start + size], kv, pos, start + size, mask))
                start += size
            return np.concatenate(outputs, axis=1)
        self.torch.flash = implementation == "torch-fused"
        cache = TorchKVCache(cache_shape, TORCH_DTYPES[self.dtype], "cpu")
        cache.k.fill_(torch.nan), cache.v.fill_(torch.nan)
        with torch.no_grad():
            for size in chunks:
                chunk = torch.from_numpy(x[:, start : start + size])
                pos = torch.arange(start, start + size)  # (size,)
                # As gpt2_torch's GPT: sdpa's own causal mask from an empty cache, none for one query
                mask = torch_causal_mask(size, start + size, "cpu") if start > 0 and size > 1 else None  # (size, S)
                kv = cache if len(chunks) > 1 else None
                outputs.append(self.torch(chunk, kv, pos, start + size, mask).numpy())
                start += size
        return np.concatenate(outputs, axis=1)


@st.composite
def attention_cases(draw):
    """(Attention, x (B, T, C)): x entries N(0, scale^2) with scale in [0.1, 3] (attention reads LayerNorm outputs)."""
    dtype, n_head, head_size = draw(dtypes), draw(head_counts), draw(head_sizes)
    layer = Attention(n_head, head_size, draw(st.booleans()), dtype, draw(seeds), draw(st.floats(0.5, 4)))
    shape = (draw(batch_sizes), draw(seq_lens), n_head * head_size)
    return layer, draw(gaussian_arrays(shape, dtype, st.floats(0.1, 3)))


def split_heads(a, n_head):
    B, T, C = a.shape
    return a.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)  # (B, T, C) -> (B, nh, T, hs)


def naive_attention(layer, x):
    """The textbook definition in float64, one head and one query at a time: out (B, T, C), probabilities
    (B, nh, T, T) and the per-head values (B, nh, T, hs)."""
    B, T, C = x.shape
    n_head, hs = layer.config.n_head, C // layer.config.n_head
    (W, b), (W_proj, b_proj) = layer.weights64("c_attn"), layer.weights64("c_proj")
    q, k, v = np.split(x.astype(np.float64) @ W + b, 3, axis=-1)  # 3 x (B, T, C)
    probabilities = np.zeros((B, n_head, T, T))
    heads = np.zeros((B, T, C))
    for i in range(B):
        for h in range(n_head):
            cols = slice(h * hs, (h + 1) * hs)
            for t in range(T):
                scores = np.array([q[i, t, cols] @ k[i, s, cols] for s in range(t + 1)]) / math.sqrt(hs)
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                probabilities[i, h, t, : t + 1] = weights
                heads[i, t, cols] = weights @ v[i, : t + 1, cols]
    return heads @ W_proj + b_proj, probabilities, split_heads(v, n_head)


def error_bounds(layer, x, e):
    """(dp, dout): the module docstring's bounds on the probabilities (B, nh, T, T) and outputs (B, T, C),
    for machine epsilon e, including K."""
    n_head, (B, T, C) = layer.config.n_head, x.shape
    hs = C // n_head
    (W, b), (W_proj, b_proj) = layer.weights64("c_attn"), layer.weights64("c_proj")
    _, p, v = naive_attention(layer, x)
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(W) + np.abs(b)  # (B, T, 3C)
    mq, mk, mv = (split_heads(m, n_head) for m in np.split(magnitude, 3, axis=-1))  # 3 x (B, nh, T, hs)
    dq, dk, dv = (math.sqrt(C + 1) * e * m for m in (mq, mk, mv))
    mkT, dkT = mk.swapaxes(-1, -2), dk.swapaxes(-1, -2)  # (B, nh, hs, T)
    dz = (math.sqrt(hs) * e * mq @ mkT + dq @ mkT + mq @ dkT) / math.sqrt(hs)  # (B, nh, T, T)
    visible = np.tril(np.ones((T, T), dtype=bool))  # (T, T) keys each query attends to
    dz_max = np.where(visible, dz, 0).max(axis=-1, keepdims=True)  # (B, nh, T, 1)
    S = np.arange(1, T + 1)[:, None]  # (T, 1) number of keys of each query
    dp = p * (2 * dz_max + np.sqrt(S) * e + 2 * e)  # (B, nh, T, T)
    dy = dp @ np.abs(v) + p @ dv + np.sqrt(S) * e * (p @ np.abs(v))  # (B, nh, T, hs)
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, C)  # noqa: E731  (B, nh, T, hs) -> (B, T, C)
    y_magnitude = merge(p @ np.abs(v))
    dout = merge(dy) @ np.abs(W_proj) + math.sqrt(C + 1) * e * (y_magnitude @ np.abs(W_proj) + np.abs(b_proj))
    return K * dp, K * dout


def output_tolerance(layer, x, e):
    return error_bounds(layer, x, e)[1]


# --- the module against its definition, and the two torch paths against each other -------------------

@given(attention_cases(), st.sampled_from(IMPLEMENTATIONS))
def test_attention_equals_naive_per_head_reference(case, implementation):
    """Each implementation equals the float64 per-head loop within tol(eps) + tol(eps64) (module docstring)."""
    layer, x = case
    reference, _, _ = naive_attention(layer, x)
    tol = output_tolerance(layer, x, eps(x.dtype)) + output_tolerance(layer, x, eps(np.float64))
    out = layer.run(implementation, x)
    assert out.dtype == x.dtype
    assert_within(out - reference, tol, implementation)


@given(attention_cases(), st.data())
def test_torch_fused_and_manual_paths_agree(case, data):
    """.flash = True (SDPA) and .flash = False give the same outputs within 2 tol(eps), in one pass and fed in
    chunks through the KV cache (where SDPA gets an explicit bottom-right aligned mask instead of is_causal)."""
    layer, x = case
    chunks = data.draw(chunkings(x.shape[1]))
    tol = 2 * output_tolerance(layer, x, eps(x.dtype))
    assert_within(layer.run("torch-fused", x) - layer.run("torch-manual", x), tol, "one pass")
    assert_within(layer.run("torch-fused", x, chunks) - layer.run("torch-manual", x, chunks), tol, f"chunks {chunks}")


# --- causality ---------------------------------------------------------------------------------------------

@given(attention_cases(), st.sampled_from(IMPLEMENTATIONS), st.data())
def test_attention_is_causal(case, implementation, data):
    """Changing the inputs after position t leaves every output at positions <= t bit for bit the same
    (zero tolerance): a masked key's weight is exactly 0 (exp(-inf) = 0, or a skipped block), 0 * v = 0 for
    finite v, and adding 0 changes no sum, whatever the order; every other operation is per row."""
    layer, x = case
    T = x.shape[1]
    t = data.draw(st.integers(0, T - 1))
    changed = x.copy()
    changed[:, t + 1 :] = data.draw(gaussian_arrays(changed[:, t + 1 :].shape, x.dtype, st.floats(0.1, 1e3)))
    before, after = layer.run(implementation, x), layer.run(implementation, changed)
    np.testing.assert_array_equal(after[:, : t + 1], before[:, : t + 1])


@few_examples(2)
@given(model_configs(), seeds, st.sampled_from(["float32", "float64"]), st.data())
def test_model_is_causal_in_its_tokens(config, seed, dtype, data):
    """The whole model, both backends: replacing every token after position t leaves all activations of
    the trace (embeddings, every block's pieces, logits) at positions <= t bit for bit the same (zero
    tolerance, as in test_attention_is_causal: everything else works row by row)."""
    rng = np.random.default_rng(seed)
    T = data.draw(st.integers(1, config.block_size))
    t = data.draw(st.integers(0, T - 1))
    idx = rng.integers(config.vocab_size, size=(data.draw(batch_sizes), T))  # (B, T)
    changed = idx.copy()
    changed[:, t + 1 :] = rng.integers(config.vocab_size, size=changed[:, t + 1 :].shape)
    for model in tiny_models(config, random_params(config, seed), dtype):
        before, after = model.trace(idx), model.trace(changed)
        for name in before:
            kept, changed_by_t = np.asarray(before[name])[:, : t + 1], np.asarray(after[name])[:, : t + 1]
            np.testing.assert_array_equal(changed_by_t, kept, err_msg=name)


# --- attention probabilities ---------------------------------------------------------------------------------

@given(st.integers(1, BLOCK_SIZE), st.data(), dtypes,
       gaussian_arrays((BLOCK_SIZE,) * 2, np.float64, st.floats(0.1, 30)))
def test_masked_softmax_rows_sum_to_one_and_vanish_above_the_diagonal(S, data, dtype, scores):
    """gpt2_numpy's softmax(scores + causal_mask(T, S)), for the last T <= S queries: every row sums to 1
    within K (sqrt(S) + 2) eps (its S quotients round once each and the sum of the exponentials is off by
    sqrt(S) eps relative, as in the module docstring; the float64 sum taken here adds nothing), and is exactly 0
    (zero tolerance) at every key after the query's own position."""
    T = data.draw(st.integers(1, S))
    p = softmax(scores[:T, :S].astype(dtype) + causal_mask(T, S, dtype))  # (T, S)
    assert p.dtype == dtype
    assert_within(p.astype(np.float64).sum(axis=-1) - 1, K * (math.sqrt(S) + 2) * eps(dtype), "row sums")
    above = ~np.tril(np.ones((T, S), dtype=bool), k=S - T)  # (T, S) key s > query's position S - T + t
    assert np.all(p[above] == 0)


class Probe(Attention):
    """Weights that make a module print its attention probabilities. The input at position s is the one-hot
    vector e_s; the value projection copies e_s into every head (needs head_size >= T) and c_proj is the
    identity, all biases but the query/key ones zero. Then out[b, t, h * hs + s] = sum_s' p[b, h, t, s'] e_s'[s]
    = p[b, h, t, s] exactly (multiplying by 1 and adding zeros round nothing), for every implementation."""

    def __init__(self, n_head, head_size, T, bias, dtype, seed, sharpness):
        super().__init__(n_head, head_size, bias, dtype, seed, sharpness)
        C = n_head * head_size
        copy_to_heads = np.zeros((C, C), dtype)  # (in, out): e_s -> e_s in each head's slice
        for h in range(n_head):
            copy_to_heads[np.arange(T), h * head_size + np.arange(T)] = 1
        with torch.no_grad():
            self.torch.c_attn.weight[2 * C :] = torch.from_numpy(copy_to_heads.T)  # nn.Linear stores (out, in)
            self.torch.c_proj.weight.copy_(torch.eye(C))
            if bias:
                self.torch.c_attn.bias[2 * C :] = 0
                self.torch.c_proj.bias.zero_()
        self.params["attn.c_attn.weight"][:, 2 * C :] = copy_to_heads
        self.params["attn.c_proj.weight"][:] = np.eye(C)
        if bias:
            self.params["attn.c_attn.bias"][2 * C :] = 0
            self.params["attn.c_proj.bias"][:] = 0

    def probabilities(self, implementation, T, chunks=None):
        """(B=1, nh, T, T) probabilities that implementation uses, read out of its outputs."""
        x = np.eye(T, self.config.n_embd, dtype=self.dtype)[None]  # (1, T, C) one-hot positions
        out = self.run(implementation, x, chunks)  # (1, T, C)
        return split_heads(out, self.config.n_head)[..., :T], x  # (1, nh, T, T)


@given(dtypes, head_counts, seeds, st.booleans(), st.floats(0.5, 4), st.sampled_from(IMPLEMENTATIONS), st.data())
def test_attention_probabilities_of_every_implementation(dtype, n_head, seed, bias, sharpness, implementation, data):
    """The probabilities each implementation really uses (read out by Probe), fed in one pass or chunk by
    chunk through the KV cache: each row sums to 1 within K (sqrt(S) + 3) eps (S quotients and the online
    rescaling of fused kernels round once each), every key after the query's position gets exactly 0
    (zero tolerance), and the rows equal the float64 reference's within dp(eps) + dp(eps64) (module docstring)."""
    T = data.draw(seq_lens)
    head_size = data.draw(st.integers(T, BLOCK_SIZE))
    chunks = data.draw(chunkings(T))
    probe = Probe(n_head, head_size, T, bias, dtype, seed, sharpness)
    p, x = probe.probabilities(implementation, T, chunks)
    _, reference, _ = naive_attention(probe, x)
    keys = np.arange(1, T + 1)  # (T,) keys each query sees
    assert_within(p.astype(np.float64).sum(axis=-1) - 1, K * (np.sqrt(keys) + 3) * eps(dtype), "row sums")
    assert np.all(p[..., ~np.tril(np.ones((T, T), dtype=bool))] == 0)
    tol = error_bounds(probe, x, eps(dtype))[0] + error_bounds(probe, x, eps(np.float64))[0]
    assert_within(p - reference, tol, "probabilities")


# --- the KV cache --------------------------------------------------------------------------------------------

@given(attention_cases(), st.sampled_from(IMPLEMENTATIONS), st.data())
def test_kv_cache_chunks_equal_one_full_pass(case, implementation, data):
    """Feeding x in chunks of random sizes (each at its start offset, attending to the cache) gives the
    outputs of one full pass within 2 tol(eps): both compute the same exact values, each within tol."""
    layer, x = case
    chunks = data.draw(chunkings(x.shape[1]))
    tol = 2 * output_tolerance(layer, x, eps(x.dtype))
    assert_within(layer.run(implementation, x, chunks) - layer.run(implementation, x), tol, f"chunks {chunks}")


@few_examples(2)
@given(model_configs(), seeds, st.data())
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_model_kv_cache_chunks_equal_the_full_trace(backend, config, seed, data):
    """The whole model in float64: tokens fed chunk by chunk with start offsets through the model's own
    KV cache (allocate_kv_cache, model(idx, start)) give, for each chunk's last position, the logits of one
    full forward pass (trace) within 1e-12 * max|logits|. Why that bound: a logit is the end of a chain of
    at most ~1e3 roundings (two layers of dot products of width <= 4C = 128, softmax over <= 16 keys,
    LayerNorms of O(1) conditioning: the parameters keep activations of order 1), each <= eps64 = 2.2e-16
    relative, so <= ~2e-13 (observed: <= 1e-15 in 200 examples); a cache bug (stale or misplaced keys, a
    wrong position embedding, a misaligned mask) moves logits by O(0.1)."""
    torch_model, numpy_model = tiny_models(config, random_params(config, seed), "float64")
    model = torch_model if backend == "torch" else numpy_model
    shape = (data.draw(batch_sizes), data.draw(st.integers(1, config.block_size)))
    idx = np.random.default_rng(seed).integers(config.vocab_size, size=shape)  # (B, T)
    full = np.asarray(model.trace(idx)["logits"])  # (B, T, V)
    model.allocate_kv_cache(idx.shape[0])
    start = 0
    for size in data.draw(chunkings(idx.shape[1])):
        chunk = idx[:, start : start + size]
        with torch.no_grad():
            logits = model(torch.from_numpy(chunk) if backend == "torch" else chunk, start)  # (B, 1, V)
        start += size
        error = np.asarray(logits)[:, 0] - full[:, start - 1]  # (B, V)
        assert_within(error, 1e-12 * np.abs(full).max(), f"after {start} tokens")
