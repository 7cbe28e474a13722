"""GPT-2 in PyTorch (CPU, CUDA, MPS): see model.py."""

from weights import GPTConfig

from .device import resolve_device
from .model import DTYPES, GPT, MLP, Block, CausalSelfAttention, KVCache, LayerNorm
from .one_row_products import OneRowLinear, use_one_row_products

__all__ = ["GPT", "GPTConfig", "LayerNorm", "KVCache", "OneRowLinear", "use_one_row_products", "CausalSelfAttention", "MLP", "Block", "DTYPES", "resolve_device"]
