"""torch.compile for the decode step (GPT.decode_step): one graph, and the settings that make it fast on each
kind of device.

- CUDA: Inductor's kernels, captured here as a CUDA graph (CUDAGraphStep): one launch replays all of a step's
  kernels, with no Python and no per-kernel launch cost in between, and the logits come back to the host in the
  same call.
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


def compile_step(step, device: torch.device, state, **options):
    """step compiled with fullgraph=True (a graph break is an error, not a slow path) for device; options go to
    torch.compile. On CUDA the step becomes a CUDAGraphStep, which reads state() (see there) before each call,
    unless options name a mode (such as "reduce-overhead", torch.compile's own CUDA graphs). dynamic=False: each KV
    cache shape (length, batch size) gets a graph of its own, with static shapes, which Inductor's C++ GEMM
    templates and CUDA graphs need; otherwise Dynamo would make the second shape it sees dynamic, and slower."""
    options.setdefault("dynamic", False)
    if device.type == "cuda" and "mode" not in options:
        return CUDAGraphStep(torch.compile(step, fullgraph=True, **options), state)
    if device.type != "cpu":  # MPS, or CUDA with a mode of torch.compile's: Inductor's defaults otherwise
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


class CUDAGraphStep:
    """The compiled decode step on CUDA as CUDA graphs captured here, one per KV cache: a call copies idx and pos
    into the graph's input buffers, replays the graph, and copies the logits into pinned host memory, with one
    synchronisation. It returns that host tensor, (B, V) float32 (float64 for a float64 model), which the next
    call overwrites.

    Why not torch.compile's mode="reduce-overhead", which captures CUDA graphs too: its bookkeeping around each
    replay (guards, its inputs, its memory pool) took 0.17 ms of host time a call on GPT-2 124M's step and 0.66 ms
    on XL's, on an H200, most of it before the GPU starts; and its logits, left on the GPU, took another 0.2-0.7 ms
    to reach the sampler (a cast, a copy into pageable memory). A token of generate is about 1.4x (124M) and 1.3x
    (XL) faster this way (README, Benchmarks, "On a GPU").

    A graph replays the addresses it was captured with: the cache's (the model keeps the cache of each shape for
    good once compiled, GPT.allocate_kv_cache) and the weights'. state() gives both, the cache and one weight:
    weights moved or replaced since (model.to(), load_state_dict(assign=True)) drop every graph.
    """

    def __init__(self, compiled, state):
        self.compiled = compiled
        self.state = state  # () -> (the cache the next call runs on, a weight tensor of the model)
        self.graphs = {}  # id(cache) -> CapturedStep, which holds the cache: its id stays its own
        self.weights_at = None  # the weight's address the graphs were captured with

    @torch.inference_mode()
    def __call__(self, idx, pos):
        cache, weight = self.state()
        if weight.data_ptr() != self.weights_at:
            self.graphs.clear()
            self.weights_at = weight.data_ptr()
        if id(cache) not in self.graphs:
            self.graphs[id(cache)] = CapturedStep(self.compiled, idx, pos, cache)
        return self.graphs[id(cache)](idx, pos)


class CapturedStep:
    """One CUDA graph of step, for the cache (and so the batch size) of its first call, on idx's device."""

    def __init__(self, step, idx, pos, cache):
        self.cache = cache
        self.device = idx.device
        self.idx, self.pos = idx.clone(), pos.clone()  # the graph's inputs, at addresses of their own
        with torch.cuda.device(self.device):
            self.graph, self.logits = capture(step, self.idx, self.pos)  # logits (B, V) in the graph's memory
        self.host = torch.empty(self.logits.shape, dtype=self.logits.dtype, pin_memory=True)

    def __call__(self, idx, pos):
        with torch.cuda.device(self.device):
            self.idx.copy_(idx, non_blocking=True)
            self.pos.copy_(pos, non_blocking=True)
            self.graph.replay()
            self.host.copy_(self.logits, non_blocking=True)
            torch.cuda.current_stream().synchronize()
        return self.host


def capture(step, idx, pos):
    """step(idx, pos) captured as a CUDA graph on the current device: (the graph, the output it replays into).
    It runs twice before the capture (compiling, loading kernels, setting up cuBLAS), on a side stream as CUDA asks.
    A decode step's runs write its keys and values into the cache, as each replay writes them again."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step(idx, pos)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(idx, pos)
    return graph, out


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
