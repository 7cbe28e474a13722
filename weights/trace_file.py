"""Golden traces: every activation of one forward pass, in a .safetensors file that any implementation can
write and any machine can check against (compare.py --save-trace, --reference PATH).

The layout (README, "Golden traces"), all tensors float64 unless said otherwise:

    prompt_ids             int64  (1, T)        the token ids the pass ran on
    embed                         (1, T, C)     token + position embeddings
    h.{i}.ln_1, h.{i}.attn, h.{i}.ln_2, h.{i}.mlp, h.{i}   (1, T, C) for each block i: its LayerNorms,
                                                the attention and MLP outputs (before the residual additions)
                                                and the block's output
    ln_f                          (1, T, C)     the final LayerNorm
    logits                        (1, T, vocab_size)

and the safetensors metadata (strings): "format" = FORMAT, "config" = the GPTConfig as JSON, "activations" =
the activation names in order as a JSON list (the file's own order is alphabetical), "computed_by" = which
model and dtype produced it.
"""

import json
import os
from collections import OrderedDict

import numpy as np

from .config import GPTConfig
from .errors import WeightsError

FORMAT = "gpt2-dual-trace/1"
BLOCK_PARTS = (".ln_1", ".attn", ".ln_2", ".mlp", "")  # each block's activations: h.{i}.ln_1 ... h.{i}


def activation_names(config: GPTConfig) -> list[str]:
    """The names of a trace, in the order a forward pass computes them."""
    blocks = [f"h.{i}{part}" for i in range(config.n_layer) for part in BLOCK_PARTS]
    return ["embed", *blocks, "ln_f", "logits"]


def save_trace(path: str | os.PathLike, activations, prompt_ids, config: GPTConfig, computed_by: str) -> None:
    """Write activations (name -> array or tensor, activation_names(config) all there) of a pass over prompt_ids."""
    from safetensors.numpy import save_file

    names = activation_names(config)
    tensors = {"prompt_ids": np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)}  # (1, T)
    for name in names:
        tensors[name] = np.ascontiguousarray(as_float64(activations[name]))
    meta = {"format": FORMAT, "config": json.dumps(vars(config)), "activations": json.dumps(names),
            "computed_by": computed_by}
    save_file(tensors, str(path), metadata=meta)


def load_trace(path: str | os.PathLike) -> tuple[GPTConfig, np.ndarray, "OrderedDict[str, np.ndarray]", str]:
    """(config, prompt_ids (1, T), activations in order, computed_by) of a trace file; a file that is not a
    complete trace of this format is a WeightsError that says what is wrong."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise WeightsError(f"{path}: not a trace file (its metadata has no \"format\": \"{FORMAT}\")")
            try:
                config = GPTConfig(**json.loads(meta["config"]))
                names = json.loads(meta["activations"])
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ValueError("the activations are not a list of names")
            except (KeyError, TypeError, ValueError) as e:
                raise WeightsError(f"{path}: the trace's config or activation list is unreadable ({e})") from None
            # n_layer is the file's word: checked against the list (each block's parts, embed, ln_f, logits)
            # before a name is made for each layer
            if len(names) != len(BLOCK_PARTS) * config.n_layer + 3:
                raise WeightsError(f"{path}: an incomplete trace ({len(names)} activations listed for "
                                   f"{config.n_layer} layers)")
            expected, keys = activation_names(config), set(f.keys())
            missing = [n for n in ["prompt_ids", *expected] if n not in keys]
            if missing or names != expected:
                raise WeightsError(f"{path}: an incomplete trace (missing {', '.join(missing[:3]) or 'nothing'}; "
                                   f"{len(names)} activations listed for {config.n_layer} layers)")
            prompt_ids = f.get_tensor("prompt_ids")
            activations = OrderedDict((name, f.get_tensor(name)) for name in names)
    except SafetensorError as e:
        raise WeightsError(f"{path}: not a safetensors file ({e})") from None
    except OSError as e:
        raise WeightsError(f"{path}: {e.strerror or e}") from None
    if prompt_ids.ndim != 2 or prompt_ids.shape[0] != 1 or prompt_ids.dtype.kind not in "iu":
        raise WeightsError(f"{path}: prompt_ids must be integers of shape (1, T), not {prompt_ids.dtype} "
                           f"{prompt_ids.shape}")
    T = prompt_ids.shape[1]
    if not 1 <= T <= config.block_size or prompt_ids.min() < 0 or prompt_ids.max() >= config.vocab_size:
        raise WeightsError(f"{path}: prompt_ids must be 1 to {config.block_size} tokens, each below "
                           f"{config.vocab_size}")
    expected = {name: (1, T, config.vocab_size if name == "logits" else config.n_embd) for name in names}
    for name, array in activations.items():
        if array.shape != expected[name] or array.dtype.kind != "f":
            raise WeightsError(f"{path}: {name} is {array.dtype} {array.shape}, expected floats of shape "
                               f"{expected[name]} for {T} prompt tokens")
    return config, prompt_ids.astype(np.int64), activations, meta.get("computed_by", "?")


def as_float64(x) -> np.ndarray:
    """A torch tensor (any dtype, any device) or a NumPy array, as a float64 NumPy array."""
    if hasattr(x, "detach"):  # a torch tensor, on any device, in any dtype
        import torch

        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)
