"""Shared fixtures: random GPT-2 checkpoints written by transformers itself, and the hypothesis profiles.

No test needs the network. The checkpoints are real Hugging Face format from an independent writer
(`GPT2LMHeadModel.save_pretrained`), with weights scaled up from transformers' 0.02 init and the
LayerNorm gains and all biases randomised: at the default init a wrong GELU variant or a missing bias
can hide below 1e-5 on a small model, and here they cannot.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=30, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)  # fmt: skip
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch and one BLAS thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): the
    test models are tiny, so one thread is as fast as two, and unlike two it does not slow down 10-50x when
    other processes keep the cores busy (OpenMP and OpenBLAS threads spin-wait for each other)."""
    from threadpoolctl import threadpool_limits

    from tests.strategies import one_torch_thread

    with one_torch_thread(), threadpool_limits(1):
        yield


@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path  # a Hugging Face directory: config.json + model.safetensors
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    block_size: int

    def hf_model(self, dtype="float32"):
        """transformers' own GPT2LMHeadModel of this checkpoint, in eval mode (no dropout)."""
        import torch
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(self.path).eval()
        return model.to(getattr(torch, dtype))


# name: (n_layer, n_head, n_embd, vocab_size, block_size). "odd" has head size 16 with 5 heads and a short
# context (to reach block_size cropping quickly); "small" has GPT-2's full vocabulary so that real prompts
# tokenize into it; "tall" has 3 heads of 12 and more layers.
SHAPES = {
    "small": (2, 4, 64, 50257, 128),
    "odd": (3, 5, 80, 50257, 48),
    "tall": (4, 3, 36, 1000, 64),
}


def write_checkpoint(directory: Path, n_layer, n_head, n_embd, vocab_size, block_size, seed=0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # its warnings about bos/eos ids outside a tiny vocabulary are expected
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size, n_positions=block_size)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.3 * torch.randn_like(p))  # gains around 1, not exactly 1
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:  # matrices and embeddings: entries of order 1/sqrt(n_embd), so activations are of order 1
                p.copy_(torch.randn_like(p) * 1.5 / n_embd**0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session", params=list(SHAPES))
def checkpoint(request, tmp_path_factory) -> Checkpoint:
    """Each random checkpoint shape in turn."""
    return _checkpoint(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Checkpoint:
    return _checkpoint("small", tmp_path_factory)


@pytest.fixture(scope="session")
def odd_checkpoint(tmp_path_factory) -> Checkpoint:
    return _checkpoint("odd", tmp_path_factory)


_written: dict[str, Checkpoint] = {}


def _checkpoint(name, tmp_path_factory) -> Checkpoint:
    if name not in _written:
        shape = SHAPES[name]
        seed = list(SHAPES).index(name)  # fixed per shape: the weights must not depend on which tests run first
        path = write_checkpoint(tmp_path_factory.mktemp(f"ckpt-{name}"), *shape, seed=seed)
        _written[name] = Checkpoint(name, path, *shape)
    return _written[name]
