"""GPT-2 in PyTorch: nanoGPT's model.py, for inference, with a KV cache and a layer-by-layer trace.

Read it beside gpt2_numpy/model.py: the classes, their attributes and the trace names are the same.
Parameter names are those of the GPT-2 checkpoint (see weights/loader.py), so weights map one to one.
"""

import math
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

import weights
from weights import GPTConfig
from weights.sampling import batch_rows, cache_length, generate_tokens

from .compiled_step import compile_step
from .device import resolve_device
from .few_row_products import use_few_row_products

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def own_copy(tensor, device, dtype, transposed=False):
    """A copy of tensor (R, C) on device in dtype, in one pass; transposed: stored as a (C, R)-contiguous
    array and returned as its (R, C) view, the same tensor with the other memory layout."""
    if transposed:
        return own_copy(tensor.t(), device, dtype).t()
    return tensor.to(device=device, dtype=dtype, memory_format=torch.contiguous_format, copy=True)


def for_the_sampler(logits):
    """logits in the dtype the shared sampler takes: float64 stays float64, as the NumPy float64 model hands it
    over; half types (NumPy has no bfloat16) and float32 become float32."""
    return logits if logits.dtype == torch.float64 else logits.float()


def causal_mask(T, S, device):
    """(T, S) bool mask, True where a query may look: query t (the t-th of the last T of S positions) sees keys
    0 .. S - T + t. S == T is the plain causal mask."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)  # (T, S)


def dropout(p):
    """nn.Dropout(p), or nn.Identity for p = 0 (GPTConfig's default, and every checkpoint but a nanoGPT one trained
    with dropout): the same function, without the 4 µs a dropout call costs on a CPU (25 a decoding step of
    GPT-2 124M)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def fused_attention_pays(q):
    """Whether SDPA is the faster attention for queries q (B, nh, T, hs). Not in a graph compiled for the CPU
    with one query per sequence (the compiled decode step): there Inductor fuses the spelled-out scale, mask
    and softmax into its own C++ loops, while the SDPA kernel costs ~50 us of setup a layer (compiled decode
    step of 124M 1.05-1.10x faster without it, float32 and bfloat16, batch 1 and 8: BENCHMARKS.md)."""
    return not (torch.compiler.is_compiling() and q.device.type == "cpu" and q.size(2) == 1)


class LayerNorm(nn.Module):
    """nanoGPT's LayerNorm: F.layer_norm with an optional bias (nn.LayerNorm has bias=False only since
    PyTorch 2.1). The formula is written out in gpt2_numpy's layer_norm; F.layer_norm is one kernel where the
    formula is ten (a decoding step runs 25 LayerNorms), and it takes a half-precision input's mean and
    variance in float32."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = 1e-5

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class KVCache(nn.Module):
    """The keys and values of one layer at every position so far: two preallocated (B, nh, L, hs) buffers.

    Each step writes its new keys and values at their positions. The buffers keep their shape and address
    for a whole generation, which is what a compiled decode step (and a CUDA graph, which replays fixed
    addresses) needs. They start as zeros, not garbage: on a GPU the decode step attends over all L positions,
    masking those not written yet, and a weight of 0 times a NaN left in memory would still be NaN; a cache used
    again is reset to zeros for the same reason (an earlier generation may have left inf behind)."""

    def __init__(self, shape, dtype, device):
        super().__init__()
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def reset(self):
        self.k.zero_()
        self.v.zero_()

    def update(self, pos, k, v, n_keys):
        """Write k, v (B, nh, T, hs), in the cache's dtype, at positions pos (T,); return the first n_keys keys and
        values. (CausalSelfAttention converts q, k and v to the cache's dtype at once, before they part.)"""
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k[:, :, :n_keys], self.v[:, :, :n_keys]  # 2 x (B, nh, n_keys, hs)

    def copy_rows(self, source, n):
        """Write source's first n positions, (1, nh, n, hs) twice, into every row: one prompt, many samples."""
        self.k[:, :, :n] = source.k[:, :, :n]
        self.v[:, :, :n] = source.v[:, :, :n]


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = dropout(config.dropout)
        self.resid_dropout = dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # Fused attention (one kernel, no T x T matrix in memory) since PyTorch 2.0, which this project requires;
        # the manual path is the same math spelled out, as nanoGPT keeps it: a reference the tests hold SDPA to,
        # and the compiled CPU decode step's attention (fused_attention_pays).
        self.flash = hasattr(F, "scaled_dot_product_attention")

    def forward(self, x, kv_cache=None, pos=None, n_keys=None, mask=None):
        """x (B, T, C) at positions pos (T,). With a kv_cache, its keys and values join the cache, and the queries
        attend to the cache's first n_keys positions. mask (T, n_keys) bool says which keys each query sees;
        None means causal with T == n_keys, or one query that sees every key."""
        B, T, C = x.size()
        qkv = self.c_attn(x)  # (B, T, 3C)
        if kv_cache is not None and kv_cache.k.dtype != qkv.dtype:
            qkv = qkv.to(kv_cache.k.dtype)  # a half-precision model's cache is float32 on a CPU: see allocate_kv_cache
        qkv = qkv.view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(pos, k, v, n_keys)  # (B, nh, n_keys, hs)
        dropout_p = self.dropout if self.training else 0.0
        if self.flash and fused_attention_pays(q):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=mask is None and T > 1)  # (B, nh, T, hs)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            if mask is None and T > 1:
                mask = causal_mask(T, T, x.device)  # (T, T)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C) heads side by side again
        if y.dtype != x.dtype:
            y = y.to(x.dtype)  # back from a float32 cache
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = dropout(config.dropout)

    def forward(self, x):
        # GPT-2 was trained with the tanh approximation of GELU; nn.GELU() (exact erf) is a different function.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, pos=None, n_keys=None, mask=None, trace=None, name="h"):
        ln_1 = self.ln_1(x)
        attn = self.attn(ln_1, kv_cache, pos, n_keys, mask)
        x = x + attn  # residual around attention
        ln_2 = self.ln_2(x)
        mlp = self.mlp(ln_2)
        x = x + mlp  # residual around the MLP
        if trace is not None:
            trace.update({f"{name}.ln_1": ln_1, f"{name}.attn": attn, f"{name}.ln_2": ln_2, f"{name}.mlp": mlp, name: x})
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: the output projection is the token embedding
        self.kv_cache = None  # n_layer KVCaches, each (B, nh, L, hs) twice; allocated by generate
        self.compiled_decode_step = None  # decode_step compiled: see compile_decode_step
        self.kept_kv_caches = {}  # (shape, dtype) -> the cache a compiled step was specialised to

    def forward(self, idx, start=0, trace=None):
        """Logits of the last position, (B, 1, vocab_size), as nanoGPT's inference forward.

        start > 0 continues the sequence in the KV cache (tokens idx sit at positions start .. start+T-1).
        """
        B, T = idx.size()
        assert start + T <= self.config.block_size, f"positions up to {start + T}, block_size is {self.config.block_size}"
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        # Query t (at position start + t) sees keys 0 .. start + t: a causal mask aligned to the bottom-right
        # corner. From an empty cache that is the plain causal mask, and one query sees every key: no mask.
        mask = causal_mask(T, start + T, idx.device) if start > 0 and T > 1 else None  # (T, S)
        return self.body(idx, pos, start + T, mask, trace)

    def decode_step(self, idx, pos):
        """Logits (B, vocab_size) of one new token per sequence, idx (B, 1), at position pos, a (1,) tensor, in the
        sampler's dtype (for_the_sampler).

        The step that torch.compile makes one graph of, for every position of a generation (compile_decode_step).
        On a CPU it attends over the pos + 1 positions written so far: in the graph their number, read from pos,
        is a symbolic size, so the graph does not depend on pos (compiled_step.py), and a step reads only the
        keys it needs (a batch-8 step of 124M 1.15x faster than over the whole cache). A CUDA graph replays fixed
        shapes: there the step attends over the whole cache, the positions after pos masked."""
        assert idx.size(1) == 1, f"one token per sequence, got {idx.size(1)}"
        L = self.kv_cache[0].k.size(2)
        if pos.device.type == "cpu":
            n_keys = pos.item() + 1
            torch._check(n_keys >= 1)  # what the compiler cannot know of a value read from a tensor
            torch._check(n_keys <= L)
        else:
            n_keys = L
        # On a CPU the mask is all True, yet it stays: without it Inductor's pattern matcher would turn the
        # spelled-out attention back into SDPA (fused_attention_pays).
        mask = (torch.arange(n_keys, device=pos.device) <= pos).view(1, n_keys)  # (1, n_keys) positions written
        return for_the_sampler(self.body(idx, pos, n_keys, mask)[:, -1, :])  # (B, vocab_size)

    def body(self, idx, pos, n_keys, mask, trace=None):
        """The transformer: tokens idx (B, T) at positions pos (T,), attending to n_keys cached keys under mask."""
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C) token + position embeddings
        if trace is not None:
            trace["embed"] = x
        for i, block in enumerate(self.h):
            cache = self.kv_cache[i] if self.kv_cache is not None else None
            x = block(x, cache, pos, n_keys, mask, trace, f"h.{i}")
        x = self.ln_f(x)  # (B, T, C)
        if trace is not None:
            trace["ln_f"] = x
            trace["logits"] = self.lm_head(x)  # (B, T, vocab_size)
            return trace["logits"][:, -1:, :].clone()  # already computed: no second product with wte
        return self.lm_head(x[:, -1:, :])  # (B, 1, vocab_size): only the last position is needed to sample

    @torch.no_grad()
    def trace(self, idx) -> "OrderedDict[str, torch.Tensor]":
        """Every named activation of a forward pass over idx (B, T), in order: embed, h.{i}.ln_1, h.{i}.attn,
        h.{i}.ln_2, h.{i}.mlp, h.{i}, ln_f, logits (B, T, vocab_size). No KV cache is used or changed."""
        idx = torch.as_tensor(idx if torch.is_tensor(idx) else np.asarray(idx), dtype=torch.long,
                              device=self.wte.weight.device)  # a tensor on any device, a list, an array
        activations = OrderedDict()
        cache, self.kv_cache = self.kv_cache, None
        try:
            self(idx, trace=activations)
        finally:
            self.kv_cache = cache
        return activations

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None, use_cache=True):
        """Continue idx (B, T) by max_new_tokens tokens and return the whole sequence (B, T + max_new_tokens)
        (B samples of a prompt idx (1, T) when rng is a list of B generators),
        as a tensor when idx is one (nanoGPT's signature), else as a NumPy array."""
        prompt = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64)  # (B, T)
        steps = [t[:, None] for t in self.generate_tokens(prompt, max_new_tokens, temperature, top_k, top_p, rng, use_cache)]
        prompt = np.repeat(prompt, batch_rows(prompt, rng) // len(prompt), axis=0)  # (B, T): one prompt row, B samples
        out = np.concatenate([prompt, *steps], axis=1)  # (B, T + max_new_tokens)
        return torch.as_tensor(out, device=idx.device) if torch.is_tensor(idx) else out

    @torch.inference_mode()  # no_grad, and no version counters on the new tensors either: less work per step
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None, use_cache=True):
        """Yield the new token ids (B,) one step at a time; the sampling is weights.sampling's, shared with NumPy.

        After compile_decode_step, the one-token steps run the compiled decode_step; the prompt (and, past
        block_size, the whole sliding window each step) runs eagerly."""
        idx = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64)  # (B, T)
        device = self.wte.weight.device
        length = cache_length(idx.shape[1], max_new_tokens, self.config.block_size)

        def forward(ids, start):
            ids = torch.from_numpy(ids.copy()).to(device)  # fresh strides: a slice's would recompile the step
            if use_cache and start == 0:
                self.allocate_kv_cache(ids.shape[0], length)
            elif use_cache and ids.shape[0] != self.kv_cache[0].k.shape[0]:
                self.expand_kv_cache(ids.shape[0], start)  # a shared prompt ran as one row
            if start > 0 and self.compiled_decode_step is not None:
                logits = self.compiled_decode_step(ids, torch.tensor([start], device=device))  # (B, V)
            else:
                logits = for_the_sampler(self(ids, start)[:, -1, :])  # (B, V)
            return logits.cpu().numpy()  # CUDAGraphStep's logits are on the host already: no copy

        rng = rng if rng is not None else np.random.default_rng()
        try:
            yield from generate_tokens(forward, idx, max_new_tokens, self.config.block_size, rng,
                                       temperature, top_k, top_p, use_cache)
        finally:
            self.kv_cache = None  # freed (length x n_layer x 2 x n_embd values per sequence), unless kept

    def compile_decode_step(self, **options):
        """Compile decode_step into one graph for generate_tokens to use: Inductor's kernels replayed as a CUDA graph
        on a GPU, Inductor's own C++ kernels on a CPU (see compiled_step.py). options go to torch.compile."""
        state = lambda: (self.kv_cache, self.wte.weight)  # noqa: E731  what a CUDA graph replays besides its inputs
        self.compiled_decode_step = compile_step(self.decode_step, self.wte.weight.device, state, **options)
        return self

    def allocate_kv_cache(self, batch_size, length=None):
        """Preallocate the keys and values of every layer for batch_size sequences of up to length tokens
        (default block_size). A cache of that shape and dtype already there is reset and used again.

        After compile_decode_step, each new cache is kept for later generations of the same shape: the compiled
        step is specialised to its buffers (Inductor's frozen graph on a CPU, the addresses a CUDA graph replays),
        and new buffers would compile or record it again. cache_length's few lengths keep them few."""
        c, w = self.config, self.wte.weight
        shape = (batch_size, c.n_head, length or c.block_size, c.n_embd // c.n_head)  # (B, nh, L, hs)
        # A half-precision model on the CPU attends in float32, so its cache is float32: the CPU's kernels for
        # the small products of attention are ~5x slower in bfloat16 (measured, BENCHMARKS.md), and the cache
        # is small beside the weights.
        half_on_cpu = w.device.type == "cpu" and w.dtype in (torch.float16, torch.bfloat16)
        dtype = torch.float32 if half_on_cpu else w.dtype
        key = (shape, dtype)
        cache = self.kv_cache
        if cache is None or (cache[0].k.shape, cache[0].k.dtype) != key:
            cache = self.kept_kv_caches.get(key)
        if cache is None:
            cache = nn.ModuleList(KVCache(shape, dtype, w.device) for _ in range(c.n_layer))
            if self.compiled_decode_step is not None:
                self.kept_kv_caches[key] = cache
        else:
            for layer in cache:
                layer.reset()
        self.kv_cache = cache

    def expand_kv_cache(self, batch_size, n):
        """Replace a one-sequence cache by one for batch_size sequences, each starting as a copy of its first n
        positions: a prompt processed once, continued by batch_size samples."""
        one_row, self.kv_cache = self.kv_cache, None
        self.allocate_kv_cache(batch_size, one_row[0].k.shape[2])
        for layer, source in zip(self.kv_cache, one_row):
            layer.copy_rows(source, n)

    @classmethod
    def from_pretrained(cls, source, device="cpu", dtype="float32"):
        """A GPT with the weights of source (a model name, or a path: see weights.load) on device, in dtype."""
        device = resolve_device(str(device))
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
        config, params = weights.load(source)
        torch_dtype = DTYPES[dtype]
        with torch.device("meta"):  # no random initialisation: every parameter is assigned below
            model = cls(config)
        # Decoding multiplies each matrix by one row, as fast as the matrix's memory layout lets the kernel read
        # it. MKL's float32 and float64 products follow weights.stored_out_in (measured in float32 on 2 threads,
        # BENCHMARKS.md): c_attn, c_fc and wte (as the lm_head, out = vocab_size) are stored (in, out),
        # attn.c_proj and mlp.c_proj (out, in); nn.Linear sees (out, in) whatever the strides. ATen's
        # half-precision kernel needs each output's weights contiguous: (out, in) for all.
        longer_side_contiguous = device.type == "cpu" and torch_dtype in (torch.float32, torch.float64)
        state = {}
        with warnings.catch_warnings():  # from_numpy warns that the memory-mapped arrays are read-only: only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, array in params.items():
                tensor = torch.from_numpy(array)  # a view of the loader's array, no copy
                if name.endswith(weights.loader.MATRICES):
                    tensor = tensor.t()  # canonical (in, out) -> nn.Linear's (out, in)
                transposed = longer_side_contiguous and weights.stored_out_in(name, array.shape) is False
                # transposed: seen as (out, in), stored (in, out)
                state[name] = own_copy(tensor, device, torch_dtype, transposed)
        state["lm_head.weight"] = state["wte.weight"]
        model.load_state_dict(state, assign=True, strict=True)
        model.lm_head.weight = model.wte.weight  # assign=True replaced the tied parameter: tie it again
        if device.type == "cpu":
            use_few_row_products(model)
        return model.eval()
