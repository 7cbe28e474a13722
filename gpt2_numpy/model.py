"""GPT-2 in pure NumPy, forward only: every piece of the math written out.

A map of gpt2_torch/model.py: the same classes with the same attributes, parameters and trace names.
The building blocks are plain functions that read like the paper; the classes only hold weights.
Arrays keep the model's dtype throughout (float32 or float64): no silent promotion to float64.
"""

import math
from collections import OrderedDict

import numpy as np

import weights
from weights import GPTConfig
from weights.sampling import batch_rows, cache_length, generate_tokens

DTYPES = {"float32": np.float32, "float64": np.float64}
COPY_SLICE_BYTES = 4 * 2**20  # product_layout copies a weight this much at a time
FEW_ROWS = 64  # up to this many rows, Linear multiplies a weight stored (out, in) as weight.T @ x.T


# --- the math -------------------------------------------------------------------------------------

def mean(x):
    """The mean over the last axis, (..., C) -> (..., 1): what x.mean(axis=-1, keepdims=True) computes (the same
    sum, divided by C), without that method's Python wrapper, which costs more than the sum for one row."""
    return x.sum(axis=-1, keepdims=True) / x.shape[-1]


def layer_norm(x, weight, bias, eps=1e-5):
    centred = x - mean(x)  # (..., C)
    var = mean(centred * centred)  # (..., 1) biased variance
    x_hat = centred / np.sqrt(var + eps)  # (..., C) zero mean, unit variance
    return x_hat * weight + bias if bias is not None else x_hat * weight


def gelu(x):
    """GPT-2's tanh approximation of x * Phi(x) (Hendrycks & Gimpel 2016), not the exact erf form:
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).

    Computed step by step in one new array: written as one expression it makes eight temporaries, and a prompt's
    (B, T, 4C) activations are large enough that each costs a pass over memory and fresh pages (prefill of
    1024 tokens 1.03-1.09x faster, the same bits)."""
    y = x * x  # x * x * x, not x**3: NumPy computes a float power with pow() per element, 20x slower
    y *= x  # x^3
    y *= 0.044715
    y += x
    y *= math.sqrt(2 / math.pi)
    np.tanh(y, out=y)
    y += 1
    y *= x  # x * (1 + tanh(...)), then halved: the same bits as halving x first (halving is exact above the subnormals)
    y *= 0.5
    return y


def softmax(x, axis=-1):
    e = x - x.max(axis=axis, keepdims=True)  # max-subtracted: exp never overflows
    np.exp(e, out=e)  # in place (e is ours): a prompt's (B, nh, T, T) scores are too large to copy for free
    e /= e.sum(axis=axis, keepdims=True)
    return e


def causal_mask(T, S, dtype):
    """(T, S) additive mask: query t (the t-th of the last T of S positions) sees keys 0 .. S - T + t."""
    return np.triu(np.full((T, S), -np.inf, dtype=dtype), k=S - T + 1)  # (T, S) 0 on and below the diagonal


def attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d) + mask) v for all heads at once: (B, nh, T, hs), (B, nh, S, hs) x 2 -> (B, nh, T, hs)."""
    scores = q @ k.swapaxes(-1, -2)  # (B, nh, T, S)
    scores *= 1 / math.sqrt(q.shape[-1])  # in place, as below: no second (B, nh, T, S) array
    if mask is not None:
        scores += mask  # (B, nh, T, S) -inf above the (bottom-right aligned) diagonal
    return softmax(scores) @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)


def causal_attention(q, k, v, mask, chunk=128):
    """attention(q, k, v, mask) for a causal mask (T, S) or none, a chunk of queries at a time: the queries up
    to t see only the keys up to S - T + t, so each chunk skips the keys after its last query (all masked).
    That nearly halves the work of a long prompt, and its (B, nh, chunk, S) scores stay small."""
    if mask is None:  # no mask: every query sees every key (one query, when decoding)
        return attention(q, k, v, mask)
    T, S = mask.shape
    y = np.empty(q.shape, q.dtype)  # (B, nh, T, hs)
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        seen = S - T + t1  # keys seen by the chunk's last query
        y[..., t0:t1, :] = attention(q[..., t0:t1, :], k[..., :seen, :], v[..., :seen, :], mask[t0:t1, :seen])
    return y


def rows(x):
    """x (B, T, C) as one matrix (B * T, C). A product of the (B, T, C) stack with a weight is B products, each
    reading the whole weight; decoding B sequences (T = 1) would read every weight B times a step."""
    return x.reshape(-1, x.shape[-1])  # (B * T, C)


# --- the modules, named as in gpt2_torch ------------------------------------------------------------

class Linear:
    """y = x @ weight + bias, weight of the canonical shape (in, out), its memory in either order (product_layout)."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias
        # With a weight stored (out, in) (GPT-2's two c_proj), OpenBLAS multiplies 2-32 rows 1.3-2x faster given the
        # product the other way round, weight.T @ x.T, and then transposed; one row (a matrix-vector product either
        # way) and a prompt's many (where x @ weight is faster) keep x @ weight (measured: BENCHMARKS.md).
        self.stored_out_in = weight.flags.f_contiguous

    def __call__(self, x):
        flat = rows(x)  # (n, in), n = B * T
        if self.stored_out_in and 1 < len(flat) <= FEW_ROWS:
            y = np.ascontiguousarray((self.weight.T @ flat.T).T)  # (out, in) x (in, n) -> (out, n) -> (n, out)
        else:
            y = flat @ self.weight  # (n, in) x (in, out) -> (n, out)
        if self.bias is not None:
            y += self.bias  # in place: y is new, and a fresh (B, T, out) array costs a prompt page faults
        return y.reshape(*x.shape[:-1], -1)  # (B, T, out)


class LayerNorm:
    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def __call__(self, x):
        return layer_norm(x, self.weight, self.bias)


class KVCache:
    """The keys and values of one layer at every position so far: two preallocated (B, nh, L, hs) arrays,
    written at each step's positions (gpt2_torch's KVCache, which a compiled step needs at fixed addresses)."""

    def __init__(self, shape, dtype):
        self.k, self.v = np.empty(shape, dtype), np.empty(shape, dtype)

    def update(self, pos, k, v, n_keys):
        """Write k, v (B, nh, T, hs) at positions pos (T,); return the first n_keys keys and values."""
        self.k[:, :, pos] = k
        self.v[:, :, pos] = v
        return self.k[:, :, :n_keys], self.v[:, :, :n_keys]  # 2 x (B, nh, n_keys, hs)

    def copy_rows(self, source, n):
        """Write source's first n positions, (1, nh, n, hs) twice, into every row: one prompt, many samples."""
        self.k[:, :, :n] = source.k[:, :, :n]
        self.v[:, :, :n] = source.v[:, :, :n]


class CausalSelfAttention:
    def __init__(self, config, p, prefix):
        self.c_attn = Linear(p[f"{prefix}.c_attn.weight"], p.get(f"{prefix}.c_attn.bias"))
        self.c_proj = Linear(p[f"{prefix}.c_proj.weight"], p.get(f"{prefix}.c_proj.bias"))
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def __call__(self, x, kv_cache=None, pos=None, n_keys=None, mask=None):
        """x (B, T, C) at positions pos (T,). With a kv_cache, its keys and values join the cache, and the queries
        attend to the cache's first n_keys positions. mask (T, n_keys) is causal, or None: one query, every key."""
        B, T, C = x.shape
        qkv = self.c_attn(x).reshape(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(pos, k, v, n_keys)  # (B, nh, n_keys, hs)
        y = causal_attention(q, k, v, mask)  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C) heads side by side again
        return self.c_proj(y)


class MLP:
    def __init__(self, config, p, prefix):
        self.c_fc = Linear(p[f"{prefix}.c_fc.weight"], p.get(f"{prefix}.c_fc.bias"))
        self.c_proj = Linear(p[f"{prefix}.c_proj.weight"], p.get(f"{prefix}.c_proj.bias"))

    def __call__(self, x):
        return self.c_proj(gelu(self.c_fc(x)))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block:
    def __init__(self, config, p, prefix):
        self.ln_1 = LayerNorm(p[f"{prefix}.ln_1.weight"], p.get(f"{prefix}.ln_1.bias"))
        self.attn = CausalSelfAttention(config, p, f"{prefix}.attn")
        self.ln_2 = LayerNorm(p[f"{prefix}.ln_2.weight"], p.get(f"{prefix}.ln_2.bias"))
        self.mlp = MLP(config, p, f"{prefix}.mlp")

    def __call__(self, x, kv_cache=None, pos=None, n_keys=None, mask=None, trace=None, name="h"):
        ln_1 = self.ln_1(x)
        attn = self.attn(ln_1, kv_cache, pos, n_keys, mask)
        x = x + attn  # residual around attention
        ln_2 = self.ln_2(x)
        mlp = self.mlp(ln_2)
        x = x + mlp  # residual around the MLP
        if trace is not None:
            trace.update({f"{name}.ln_1": ln_1, f"{name}.attn": attn, f"{name}.ln_2": ln_2, f"{name}.mlp": mlp, name: x})
        return x


class GPT:
    def __init__(self, config: GPTConfig, params: dict[str, np.ndarray]):
        """params: canonical name -> array (weights.load), already in the model's dtype."""
        self.config = config
        self.dtype = params["wte.weight"].dtype
        self.wte = params["wte.weight"]  # (vocab_size, C), stored (C, vocab_size) for the lm_head it also is
        self.wpe = params["wpe.weight"]  # (block_size, C)
        self.h = [Block(config, params, f"h.{i}") for i in range(config.n_layer)]
        self.ln_f = LayerNorm(params["ln_f.weight"], params.get("ln_f.bias"))
        self.kv_cache = None  # n_layer KVCaches, each (B, nh, L, hs) twice; allocated by generate

    def lm_head(self, x):
        logits = rows(x) @ self.wte.T  # (B * T, C) x (C, vocab_size), tied to the token embedding
        return logits.reshape(*x.shape[:-1], -1)  # (B, T, vocab_size)

    def __call__(self, idx, start=0, trace=None):
        """Logits of the last position, (B, 1, vocab_size), as the torch backend's forward.

        start > 0 continues the sequence in the KV cache (tokens idx sit at positions start .. start+T-1).
        """
        idx = np.asarray(idx)
        B, T = idx.shape
        assert start + T <= self.config.block_size, f"positions up to {start + T}, block_size is {self.config.block_size}"
        pos = np.arange(start, start + T)  # (T,)
        # One query at the end of the cache (decoding) sees every key; otherwise one mask serves every layer.
        mask = causal_mask(T, start + T, self.dtype) if T > 1 else None  # (T, S)
        return self.body(idx, pos, start + T, mask, trace)

    def body(self, idx, pos, n_keys, mask, trace=None):
        """The transformer: tokens idx (B, T) at positions pos (T,), attending to n_keys cached keys under mask."""
        x = self.wte[idx] + self.wpe[pos]  # (B, T, C) token + position embeddings
        if trace is not None:
            trace["embed"] = x
        for i, block in enumerate(self.h):
            cache = self.kv_cache[i] if self.kv_cache is not None else None
            x = block(x, cache, pos, n_keys, mask, trace, f"h.{i}")
        x = self.ln_f(x)  # (B, T, C)
        if trace is not None:
            trace["ln_f"] = x
            trace["logits"] = self.lm_head(x)  # (B, T, vocab_size)
            return trace["logits"][:, [-1], :]  # already computed: no second product with wte
        return self.lm_head(x[:, [-1], :])  # (B, 1, vocab_size): only the last position is needed to sample

    def trace(self, idx) -> "OrderedDict[str, np.ndarray]":
        """Every named activation of a forward pass over idx (B, T), in order: embed, h.{i}.ln_1, h.{i}.attn,
        h.{i}.ln_2, h.{i}.mlp, h.{i}, ln_f, logits (B, T, vocab_size). No KV cache is used or changed."""
        activations = OrderedDict()
        cache, self.kv_cache = self.kv_cache, None
        try:
            self(idx, trace=activations)
        finally:
            self.kv_cache = cache
        return activations

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None, use_cache=True):
        """Continue idx (B, T) by max_new_tokens tokens and return the whole sequence (B, T + max_new_tokens)
        (B samples of a prompt idx (1, T) when rng is a list of B generators)."""
        prompt = np.asarray(idx, dtype=np.int64)  # (B, T)
        steps = [t[:, None] for t in self.generate_tokens(prompt, max_new_tokens, temperature, top_k, top_p, rng, use_cache)]
        prompt = np.repeat(prompt, batch_rows(prompt, rng) // len(prompt), axis=0)  # (B, T): one prompt row, B samples
        return np.concatenate([prompt, *steps], axis=1)  # (B, T + max_new_tokens)

    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None, use_cache=True):
        """Yield the new token ids (B,) one step at a time; the sampling is weights.sampling's, shared with torch."""
        idx = np.asarray(idx, dtype=np.int64)  # (B, T)
        length = cache_length(idx.shape[1], max_new_tokens, self.config.block_size)

        def forward(ids, start):
            if use_cache and start == 0:
                self.allocate_kv_cache(ids.shape[0], length)
            elif use_cache and ids.shape[0] != self.kv_cache[0].k.shape[0]:
                self.expand_kv_cache(ids.shape[0], start)  # a shared prompt ran as one row
            return self(ids, start)[:, -1, :]  # (B, V)

        rng = rng if rng is not None else np.random.default_rng()
        try:
            yield from generate_tokens(forward, idx, max_new_tokens, self.config.block_size, rng,
                                       temperature, top_k, top_p, use_cache)
        finally:
            self.kv_cache = None  # free it: length x n_layer x 2 x n_embd values per sequence

    def allocate_kv_cache(self, batch_size, length=None):
        """Preallocate the keys and values of every layer for batch_size sequences of up to length tokens
        (default block_size); a cache of that shape already there is kept, as it is."""
        c = self.config
        shape = (batch_size, c.n_head, length or c.block_size, c.n_embd // c.n_head)  # (B, nh, L, hs)
        if self.kv_cache is None or self.kv_cache[0].k.shape != shape:
            self.kv_cache = [KVCache(shape, self.dtype) for _ in range(c.n_layer)]

    def expand_kv_cache(self, batch_size, n):
        """Replace a one-sequence cache by one for batch_size sequences, each starting as a copy of its first n
        positions: a prompt processed once, continued by batch_size samples."""
        one_row, self.kv_cache = self.kv_cache, None
        self.allocate_kv_cache(batch_size, one_row[0].k.shape[2])
        for layer, source in zip(self.kv_cache, one_row):
            layer.copy_rows(source, n)

    @classmethod
    def from_pretrained(cls, source, dtype="float32"):
        """A GPT with the weights of source (a model name, or a path: see weights.load), in float32 or float64.

        Arrays already in dtype and in the layout their product reads fastest (product_layout) are used as
        the loader returns them: memory-mapped safetensors, no copy. Others are copied once."""
        if dtype not in DTYPES:
            raise ValueError(f"the NumPy backend computes in {' or '.join(DTYPES)}, not '{dtype}'")
        config, params = weights.load(source)
        for name in list(params):  # in place: an array the loader made (a torch pickle's) is freed once copied
            params[name] = product_layout(name, params[name], DTYPES[dtype])
        return cls(config, params)


# --- loading ----------------------------------------------------------------------------------------

def product_layout(name, array, dtype):
    """array in dtype, in its canonical shape, its memory laid out as its product reads it fastest
    (weights.stored_out_in): c_attn and c_fc stay (in, out) as on disk, attn.c_proj and mlp.c_proj are stored
    (out, in), and wte, which the lm_head multiplies as wte.T, is stored (C, vocab_size) (the embedding then
    gathers one strided column per token). A copy is made a few MiB at a time; when the array is a view of
    a memory-mapped file, the file's pages read so far are released after each slice
    (weights.release_pages), so that no weight is resident twice, not even while loading."""
    out_in = weights.stored_out_in(name, array.shape)
    if out_in is None:
        return array.astype(dtype, copy=False)  # biases, LayerNorm parameters, wpe (rows gathered, no product)
    # C order stores the canonical shape as it reads: (out, in) for wte, (in, out) for the matrices.
    order = "C" if out_in == (name == "wte.weight") else "F"
    if array.dtype == dtype and array.flags[f"{order}_CONTIGUOUS"]:
        return array  # as it lies in the file: no copy
    stored = np.empty(array.shape, dtype, order=order)
    rows_per_slice = max(1, COPY_SLICE_BYTES // (array.shape[1] * array.itemsize))
    for r in range(0, array.shape[0], rows_per_slice):
        stored[r:r + rows_per_slice] = array[r:r + rows_per_slice]
        weights.release_pages(array[:r + rows_per_slice])  # all read so far: a page two slices share goes too
    return stored
