"""GPT-2 in PyTorch (CPU, CUDA, MPS): see model.py."""

from weights import GPTConfig

from .device import resolve_device
from .model import DTYPES, GPT, MLP, Block, CausalSelfAttention, LayerNorm, Linear

__all__ = ["GPT", "GPTConfig", "LayerNorm", "Linear", "CausalSelfAttention", "MLP", "Block", "DTYPES", "resolve_device"]
