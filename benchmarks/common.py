"""What the benchmark suite and the report share: the checkpoint, the contenders, and how to load them."""

import os
import shutil
from pathlib import Path

import numpy as np

# A random GPT-2 124M (the shape of the released "gpt2") in Hugging Face format: speed does not depend on the
# values, and random weights need no download. Written once by transformers, then reused.
CACHE_DIR = Path(os.environ.get("GPT2_BENCH_CACHE", Path.home() / ".cache" / "gpt2-dual-bench"))
CHECKPOINT = CACHE_DIR / "gpt2-124M-random"

# Each contender is a backend and a dtype. transformers' GPT2LMHeadModel is the reference the targets name;
# torch+compile is the torch backend with its decode step compiled (sample.py --compile).
CONTENDERS = ("torch-float32", "torch+compile-float32", "torch-bfloat16", "torch+compile-bfloat16", "numpy-float32",
              "transformers-float32", "transformers-bfloat16")

# Environment variables that pin OpenBLAS to an older kernel on the development machines (see BENCHMARKS.md).
OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def checkpoint() -> Path:
    """The random GPT-2 124M checkpoint directory, written by transformers' save_pretrained on first use."""
    if (CHECKPOINT / "model.safetensors").is_file():
        return CHECKPOINT
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()  # GPT2Config() is GPT-2 124M: 12 layers, 12 heads, 768 wide
    partial = CHECKPOINT.with_name(CHECKPOINT.name + ".partial")  # renamed when complete: never half a checkpoint
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    partial.rename(CHECKPOINT)
    return CHECKPOINT


def load(contender: str, path=None):
    """The model of a contender ("backend-dtype"), in eval mode, on the CPU."""
    backend, dtype = contender.split("-")
    path = path or checkpoint()
    if backend in ("torch", "torch+compile"):
        import gpt2_torch

        model = gpt2_torch.GPT.from_pretrained(path, dtype=dtype)
        return model.compile_decode_step() if backend == "torch+compile" else model
    if backend == "numpy":
        import gpt2_numpy

        return gpt2_numpy.GPT.from_pretrained(path, dtype=dtype)
    if backend == "transformers":
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging

        logging.set_verbosity_error()
        return GPT2LMHeadModel.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    raise ValueError(f"unknown contender '{contender}' (known: {', '.join(CONTENDERS)})")


def prompt(length: int, vocab_size=50257, seed=0) -> np.ndarray:
    """(1, length) random token ids: a batch of one prompt."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=(1, length), dtype=np.int64)
