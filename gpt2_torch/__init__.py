"""GPT-2 in PyTorch (CPU, CUDA, MPS): see model.py."""

from weights import GPTConfig

from .device import resolve_device
from .model import DTYPES, GPT, MLP, Block, CausalSelfAttention, KVCache, LayerNorm, causal_mask
from .few_row_products import FewRowLinear, use_few_row_products

__all__ = ["GPT", "GPTConfig", "LayerNorm", "KVCache", "CausalSelfAttention", "MLP", "Block", "DTYPES", "causal_mask",
           "FewRowLinear", "use_few_row_products", "resolve_device"]
