"""Turning a device name (cpu, cuda, cuda:N, mps) into a torch.device that is really there."""

import torch


def resolve_device(name: str) -> torch.device:
    """torch.device(name), or ValueError with one line saying why that device cannot be used here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device '{name}' (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}': CUDA is not available here (no GPU, or a CPU-only PyTorch build)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}': there are only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device '{name}': Apple's MPS is not available here")
    elif device.type != "cpu":
        raise ValueError(f"device '{name}' is not supported (use cpu, cuda, cuda:N or mps)")
    return device
