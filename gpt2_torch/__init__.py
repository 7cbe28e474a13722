"""GPT-2 in PyTorch (CPU, CUDA, MPS): see model.py."""

from weights import GPTConfig

from .device import resolve_device
from .model import DTYPES, GPT, MLP, Block, CausalSelfAttention, KVCache, LayerNorm, causal_mask
from .one_row_products import OneRowLinear, use_one_row_products

__all__ = ["GPT", "GPTConfig", "LayerNorm", "KVCache", "CausalSelfAttention", "MLP", "Block", "DTYPES", "causal_mask",
           "OneRowLinear", "use_one_row_products", "resolve_device"]
