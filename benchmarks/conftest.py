"""Fixtures of the pytest-benchmark suite: the models of each backend, loaded once per session.

Run with `uv run pytest benchmarks --benchmark-only`. On the development machines, unset the two variables
that pin OpenBLAS to an old kernel for this command (the header printed by pytest shows the kernel in use):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE uv run pytest benchmarks --benchmark-only
"""

import os

import numpy as np
import pytest
import torch

from benchmarks import common

# (backend, dtype): float32 for both, and bfloat16 where the backend has it (NumPy has no bfloat16).
BACKENDS = [("torch", "float32"), ("torch", "bfloat16"), ("numpy", "float32")]
_models = {}


def pytest_report_header(config):
    from threadpoolctl import threadpool_info

    pins = [f"{name}={os.environ[name]}" for name in common.OPENBLAS_PINS if name in os.environ]
    blas = ", ".join(f"{i['internal_api']} {i.get('architecture') or ''} x{i['num_threads']}".strip()
                     for i in threadpool_info() if i["user_api"] == "blas")
    return [f"numpy BLAS: {blas or 'none loaded yet'}; torch {torch.__version__}, {torch.get_num_threads()} threads"
            + (f"; WARNING: {' '.join(pins)} is set (slow OpenBLAS kernel)" if pins else "")]


def model_of(backend, dtype):
    if (backend, dtype) not in _models:
        _models[backend, dtype] = common.load(f"{backend}-{dtype}")
    return _models[backend, dtype]


@pytest.fixture(params=BACKENDS, ids=lambda p: f"{p[0]}-{p[1]}")
def backend(request):
    """(backend name, dtype, model, to_input): to_input turns a NumPy array into that backend's input."""
    name, dtype = request.param
    model = model_of(name, dtype)
    if name == "torch":
        torch_dtype = getattr(torch, dtype)

        def to_input(array):
            tensor = torch.from_numpy(array)
            return tensor.to(torch_dtype) if tensor.is_floating_point() else tensor

        with torch.inference_mode():  # as generate runs: no autograd bookkeeping
            yield name, dtype, model, to_input
    else:
        yield name, dtype, model, lambda array: array


@pytest.fixture
def hidden():
    """hidden(T): a (1, T, 768) float32 activation of order 1, as a block sees."""
    return lambda T: np.random.default_rng(0).standard_normal((1, T, 768), dtype=np.float32)
