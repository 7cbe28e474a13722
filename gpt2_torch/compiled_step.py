"""torch.compile for the decode step (GPT.decode_step): one graph, and the settings that make it fast on each
kind of device.

- CUDA: mode="reduce-overhead" captures the step as a CUDA graph: one launch replays all of its kernels,
  with no Python and no per-kernel launch cost in between.
- CPU: with Inductor's defaults the compiled step calls MKL for its products, and MKL multiplies one row on
  one core: measured 0.97x eager decoding, whose one-row products run on every core (few_row_products.py).
  With freezing (the weights become constants of the graph, so Inductor may repack them) and max-autotune,
  Inductor times its own C++ GEMM micro-kernels against MKL for each product and keeps the faster: they ran
  3-4x faster than MKL's on GPT-2 124M's one-row products, and decoding 1.3x faster than eager (BENCHMARKS.md).
  The price: a packed copy of the weights beside the model's own (the eager prompt pass still uses those),
  and a longer first compile (about a minute for 124M on 2 cores). `freezing` is read outside the options
  torch.compile passes to Inductor, so it is set around each call (a few microseconds). So is Dynamo's
  `capture_scalar_outputs`: the CPU step reads how many cached positions to attend over from its position
  tensor (`pos.item()`), and with it Dynamo keeps that number in the graph as a symbolic size, one graph for
  every position, instead of breaking the graph there.
"""

import logging

import torch
import torch._dynamo.config as dynamo_config
import torch._inductor.config as inductor_config

CPU_SETTINGS = {
    "freezing": True,
    "autotune_num_choices_displayed": 0,  # max-autotune prints a table per product otherwise
    "max_autotune_report_choices_stats": False,
}


def compile_step(step, device: torch.device, **options):
    """step compiled with fullgraph=True (a graph break is an error, not a slow path) for device; options go
    to torch.compile (a mode given there replaces the one chosen here). dynamic=False: each KV cache shape
    (length, batch size) gets a graph of its own, with static shapes, which Inductor's C++ GEMM templates and
    CUDA graphs need; otherwise Dynamo would make the second shape it sees dynamic, and slower."""
    options.setdefault("dynamic", False)
    if device.type == "cuda":
        options.setdefault("mode", "reduce-overhead")
    if device.type != "cpu":  # CUDA, and MPS with Inductor's defaults
        return torch.compile(step, fullgraph=True, **options)
    quiet_cpp_extension_import()
    options.setdefault("mode", "max-autotune-no-cudagraphs")
    compiled = torch.compile(step, fullgraph=True, **options)

    # Settings this torch's Inductor lacks are left out (the quieting ones are recent; pyproject allows torch 2.4).
    settings = {name: value for name, value in CPU_SETTINGS.items() if hasattr(inductor_config, name)}

    def frozen_step(*args):
        with inductor_config.patch(settings), dynamo_config.patch(capture_scalar_outputs=True):
            return compiled(*args)

    return frozen_step


def quiet_cpp_extension_import():
    """Inductor imports torch.utils.cpp_extension, which logs "No CUDA runtime is found, using CUDA_HOME=..." on
    a machine without CUDA: a warning about nothing this step uses."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401
    finally:
        log.setLevel(level)
