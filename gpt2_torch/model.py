"""GPT-2 in PyTorch: nanoGPT's model.py, for inference, with a KV cache and a layer-by-layer trace.

Read it beside gpt2_numpy/model.py: the classes, their attributes and the trace names are the same.
Parameter names are those of the GPT-2 checkpoint (see weights/loader.py), so weights map one to one.
"""

import math
import threading
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

import weights
from weights import GPTConfig
from weights.sampling import generate_tokens

from .device import resolve_device

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def own_copy(tensor, device, dtype, transposed=False):
    """A copy of tensor (R, C) on device in dtype, in one pass; transposed: stored as a (C, R)-contiguous
    array and returned as its (R, C) view, the same tensor with the other memory layout."""
    if transposed:
        return own_copy(tensor.t(), device, dtype).t()
    return tensor.to(device=device, dtype=dtype, memory_format=torch.contiguous_format, copy=True)


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


# torch.backends.mkldnn.enabled is one flag for the whole process: one product at a time switches it off.
onednn_switch = threading.Lock()


class Linear(nn.Linear):
    """nn.Linear, with faster kernels for one row on a CPU: the products of decoding.

    A one-row product reads the whole weight for two flops per weight, so memory bandwidth sets its speed,
    and on a CPU that takes every core reading. Measured on a 2-core EPYC (BENCHMARKS.md):
    - float32: MKL multiplies one row on one core. One block of the weight's rows per thread, multiplied
      as one batch (MKL's batched product runs the blocks on all threads), reads GPT-2's matrices 1.1-1.4x
      faster, and decoding gets 1.3x faster.
    - bfloat16 and float16: oneDNN's matmul reads one row's bfloat16 weight at 10-20 GB/s, ATen's own
      kernel at 26-32 GB/s when the weight is (out, in) contiguous, so oneDNN is switched off around the
      product. Another thread's product in that moment runs without oneDNN too, and torch.compile traces
      the plain product: this is for eager decoding.
    Anything else (several rows, a GPU, float64, float32 on one thread) takes nn.Linear's own kernels."""

    def forward(self, x):
        if x.device.type == "cpu" and x.numel() == self.in_features and x.dtype == self.weight.dtype:
            threads = torch.get_num_threads()
            mkl = torch.backends.mkl.is_available()
            if x.dtype == torch.float32 and threads > 1 and mkl and self.out_features > 0:
                return self.row_blocks_product(x, blocks=min(threads, self.out_features))
            if x.dtype in (torch.bfloat16, torch.float16) and self.weight.is_contiguous():
                return self.product_without_onednn(x)
        return super().forward(x)

    def row_blocks_product(self, x, blocks):
        """x @ weight.T + bias for one row x (..., in), the weight's rows in blocks (any memory layout)."""
        out, n_in = self.weight.shape
        size = out // blocks  # rows per block; the out % blocks rows left over are multiplied on their own
        split = blocks * size
        w = self.weight[:split].view(blocks, size, n_in).transpose(1, 2)  # (blocks, in, size)
        x_rows = x.reshape(1, 1, n_in).expand(blocks, 1, n_in)  # (blocks, 1, in), the same row for each block
        if self.bias is None:
            y = torch.bmm(x_rows, w).view(1, split)  # (1, split)
        else:
            y = torch.baddbmm(self.bias[:split].view(blocks, 1, size), x_rows, w).view(1, split)  # (1, split)
        if split < out:
            rest = self.bias[split:] if self.bias is not None else None
            y = torch.cat([y, F.linear(x.reshape(1, n_in), self.weight[split:], rest)], dim=1)  # (1, out)
        return y.view(x.shape[:-1] + (out,))  # (..., out)

    def product_without_onednn(self, x):
        with onednn_switch:
            onednn, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
            try:
                return super().forward(x)
            finally:
                torch.backends.mkldnn.enabled = onednn


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # Fused attention (one kernel, no T x T matrix in memory) since PyTorch 2.0; the manual path is
        # the same math spelled out, kept for older versions and tested equal.
        self.flash = hasattr(F, "scaled_dot_product_attention")

    def forward(self, x, kv_cache=None, start=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:  # append this step's keys and values, then attend to all S = start + T of them
            k_cache, v_cache = kv_cache  # 2 x (B, nh, block_size, hs), preallocated
            k_cache[:B, :, start : start + T] = k
            v_cache[:B, :, start : start + T] = v
            k, v = k_cache[:B, :, : start + T], v_cache[:B, :, : start + T]  # (B, nh, S, hs)
            q = q.to(k.dtype)  # the cache may be float32 in a half-precision model: see GPT.allocate_kv_cache
        S = k.size(2)
        # Query t (at absolute position start + t) may see keys 0 .. start + t: a causal mask aligned to the
        # bottom-right corner. One query at the end of the cache (decoding) sees every key: no mask at all.
        dropout_p = self.dropout if self.training else 0.0
        if self.flash and (T == 1 or T == S):
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T > 1)  # (B, nh, T, hs)
        else:
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)  # (T, S)
            if self.flash:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
                att = att.masked_fill(~mask, float("-inf"))
                att = F.softmax(att, dim=-1)
                att = self.attn_dropout(att)
                y = att @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C).to(x.dtype)  # (B, T, C) heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

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

    def forward(self, x, kv_cache=None, start=0, trace=None, name="h"):
        ln_1 = self.ln_1(x)
        attn = self.attn(ln_1, kv_cache, start)
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
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: the output projection is the token embedding
        self.kv_cache = None  # n_layer x (k, v), each (B, nh, block_size, hs); allocated by generate

    def forward(self, idx, start=0, trace=None):
        """Logits of the last position, (B, 1, vocab_size), as nanoGPT's inference forward.

        start > 0 continues the sequence in the KV cache (tokens idx sit at positions start .. start+T-1).
        """
        B, T = idx.size()
        assert start + T <= self.config.block_size, f"positions up to {start + T}, block_size is {self.config.block_size}"
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C) token + position embeddings
        if trace is not None:
            trace["embed"] = x
        for i, block in enumerate(self.h):
            x = block(x, self.kv_cache[i] if self.kv_cache is not None else None, start, trace, f"h.{i}")
        x = self.ln_f(x)  # (B, T, C)
        if trace is not None:
            trace["ln_f"] = x
            trace["logits"] = self.lm_head(x)  # (B, T, vocab_size)
            return trace["logits"][:, [-1], :]  # already computed: no second product with wte
        return self.lm_head(x[:, [-1], :])  # (B, 1, vocab_size): only the last position is needed to sample

    @torch.no_grad()
    def trace(self, idx) -> "OrderedDict[str, torch.Tensor]":
        """Every named activation of a forward pass over idx (B, T), in order: embed, h.{i}.ln_1, h.{i}.attn,
        h.{i}.ln_2, h.{i}.mlp, h.{i}, ln_f, logits (B, T, vocab_size). No KV cache is used or changed."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=self.wte.weight.device)
        activations = OrderedDict()
        cache, self.kv_cache = self.kv_cache, None
        try:
            self(idx, trace=activations)
        finally:
            self.kv_cache = cache
        return activations

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None, use_cache=True):
        """Continue idx (B, T) by max_new_tokens tokens and return the whole sequence (B, T + max_new_tokens),
        as a tensor when idx is one (nanoGPT's signature), else as a NumPy array."""
        prompt = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64)  # (B, T)
        steps = [t[:, None] for t in self.generate_tokens(prompt, max_new_tokens, temperature, top_k, top_p, rng, use_cache)]
        out = np.concatenate([prompt, *steps], axis=1)  # (B, T + max_new_tokens)
        return torch.as_tensor(out, device=idx.device) if torch.is_tensor(idx) else out

    @torch.inference_mode()  # no_grad, and no version counters on the new tensors either: less work per step
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, rng=None, use_cache=True):
        """Yield the new token ids (B,) one step at a time; the sampling is weights.sampling's, shared with NumPy."""
        idx = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64)  # (B, T)
        device = self.wte.weight.device

        def forward(ids, start):
            if start == 0 and use_cache:
                self.allocate_kv_cache(ids.shape[0])
            logits = self(torch.from_numpy(ids).to(device), start)[:, -1, :]  # (B, V)
            # float64 stays float64, as the NumPy float64 model hands it over; half types (NumPy has no
            # bfloat16) and float32 reach the sampler as float32.
            return logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32).cpu().numpy()

        rng = rng if rng is not None else np.random.default_rng()
        try:
            yield from generate_tokens(forward, idx, max_new_tokens, self.config.block_size, rng,
                                       temperature, top_k, top_p, use_cache)
        finally:
            self.kv_cache = None  # free it: block_size x n_layer x 2 x n_embd values per sequence

    def allocate_kv_cache(self, batch_size):
        """Preallocate the keys and values of every layer for batch_size sequences of up to block_size tokens."""
        c, w = self.config, self.wte.weight
        shape = (batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)  # (B, nh, block_size, hs)
        # A half-precision model on the CPU attends in float32, so its cache is float32: the CPU's kernels for
        # the small products of attention are ~5x slower in bfloat16 (measured, BENCHMARKS.md), and the cache
        # is small beside the weights.
        half_on_cpu = w.device.type == "cpu" and w.dtype in (torch.float16, torch.bfloat16)
        dtype = torch.float32 if half_on_cpu else w.dtype
        if self.kv_cache is None or self.kv_cache[0][0].shape != shape or self.kv_cache[0][0].dtype != dtype:
            self.kv_cache = [(w.new_empty(shape, dtype=dtype), w.new_empty(shape, dtype=dtype))
                             for _ in range(c.n_layer)]

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
        # it (measured, BENCHMARKS.md). MKL's float32 and float64 products read fastest with the longer side
        # contiguous: c_attn, c_fc, the square attn.c_proj and wte (as the lm_head, out = vocab_size) are
        # stored (in, out), mlp.c_proj (out, in); nn.Linear sees (out, in) whatever the strides. ATen's
        # half-precision kernel needs each output's weights contiguous: (out, in) for all.
        longer_side_contiguous = device.type == "cpu" and torch_dtype in (torch.float32, torch.float64)
        state = {}
        with warnings.catch_warnings():  # from_numpy warns that the memory-mapped arrays are read-only: only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, array in params.items():
                tensor = torch.from_numpy(array)  # a view of the loader's array, no copy
                if name.endswith(weights.loader.MATRICES):
                    tensor = tensor.t()  # canonical (in, out) -> nn.Linear's (out, in)
                product_weight = name.endswith(weights.loader.MATRICES) or name == "wte.weight"
                transposed = longer_side_contiguous and product_weight and tensor.shape[0] >= tensor.shape[1]
                # transposed: seen as (out, in), stored (in, out)
                state[name] = own_copy(tensor, device, torch_dtype, transposed)
        state["lm_head.weight"] = state["wte.weight"]
        model.load_state_dict(state, assign=True, strict=True)
        model.lm_head.weight = model.wte.weight  # assign=True replaced the tied parameter: tie it again
        return model.eval()
