"""GPT-2 in pure NumPy, forward only: see model.py. Imports neither torch nor any other framework."""

from weights import GPTConfig

from .model import DTYPES, GPT, MLP, Block, CausalSelfAttention, KVCache, LayerNorm, Linear, attention, causal_mask, gelu, layer_norm, softmax

__all__ = ["GPT", "GPTConfig", "LayerNorm", "Linear", "KVCache", "CausalSelfAttention", "MLP", "Block", "DTYPES",
           "attention", "causal_mask", "gelu", "layer_norm", "softmax"]
