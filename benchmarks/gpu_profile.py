"""Where a compiled decoding token's time goes on a CUDA GPU, and other ways to compile the step (bfloat16, batch 1).

    python -m benchmarks.gpu_profile 124M XL      # needs CUDA; prints its findings, a few minutes per shape

For each GPT-2 shape (random weights): a token of generate with torch.compile's mode="reduce-overhead", and that
token's parts (the inputs made into device tensors, the step called, its logits copied to the host, the sampler);
then the same step captured by hand as a CUDA graph (compiled_step.CapturedStep, what --compile now runs) with
its inputs, logits and a greedy draw; and the GPU kernels of one step from the profiler, for the step compiled
by Inductor's defaults, with coordinate-descent tuning, with max-autotune, and not compiled at all (the eager
step in a graph).
BENCHMARKS.md ("Measured and not adopted", and the CUDAGraphStep row) quotes its output on an H200,
benchmarks/gpu_profile-2026-12-04.log.
"""

import statistics
import sys
import time

import numpy as np
import torch

from benchmarks.gpu import NEW_TOKENS, PROMPT_TOKENS, SHAPES, ours
from gpt2_torch.compiled_step import CapturedStep, capture
from weights.sampling import cache_length, sample_next

DEVICE = torch.device("cuda")


def log(*parts):
    print(*parts, flush=True)


def ms_per_call(fn, calls=200):
    """Milliseconds a call, GPU work included (calls back to back, one synchronisation at the end)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e3


def host_ms(fn, calls=50):
    """Milliseconds of host time a call takes from an idle GPU to its return (the median)."""
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e3


def kernels(fn, label, steps=5, top=8):
    """Print the GPU kernels of fn: how many a call, their time, the span from the first to the last, the top ones."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
              and not e.name.startswith(("Memcpy", "Memset"))]
    span = max(e.time_range.end for e in events) - min(e.time_range.start for e in events)
    log(f"  [{label}] kernels/step {len(events) / steps:.0f}, kernel time "
        f"{sum(e.device_time for e in events) / steps / 1e3:.3f} ms/step, GPU span {span / steps / 1e3:.3f} ms/step")
    by_name = {}
    for e in events:
        count, total = by_name.get(e.name[:70], (0, 0.0))
        by_name[e.name[:70]] = (count + 1, total + e.device_time)
    for name, (count, total) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]:
        log(f"     {total / steps / 1e3:7.3f} ms  x{count / steps:5.0f}  {name}")


def profile(shape):
    torch._dynamo.reset()
    config = SHAPES[shape]
    log(f"=== {shape}")
    model = ours(config, DEVICE, torch.bfloat16, compiled=False).compile_decode_step(mode="reduce-overhead")
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, size=(1, PROMPT_TOKENS))
    start = time.perf_counter()
    model.generate(prompt, NEW_TOKENS, temperature=0)
    log(f"  first generate {time.perf_counter() - start:.1f} s")
    tokens = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(prompt, NEW_TOKENS, temperature=0)
        torch.cuda.synchronize()
        tokens.append((time.perf_counter() - start) / NEW_TOKENS * 1e3)
    log(f"  generate (reduce-overhead): {statistics.median(tokens):.3f} ms/token ({[round(t, 3) for t in tokens]})")
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        model.allocate_kv_cache(1, cache_length(PROMPT_TOKENS, NEW_TOKENS, config.block_size))
        model(torch.zeros((1, PROMPT_TOKENS), dtype=torch.long, device=DEVICE), 0)
        token = np.zeros((1, 1), np.int64)
        idx = torch.zeros((1, 1), dtype=torch.long, device=DEVICE)
        pos = torch.tensor([PROMPT_TOKENS], device=DEVICE)

        def inputs():  # what generate makes of a step's token and position
            return torch.from_numpy(token.copy()).to(DEVICE), torch.tensor([PROMPT_TOKENS], device=DEVICE)

        log(f"  inputs to device: {host_ms(inputs):.3f} ms")
        step = model.compiled_decode_step
        log(f"  reduce-overhead step, call+sync: {ms_per_call(lambda: step(idx, pos)):.3f} ms; "
            f"host time of a call: {host_ms(lambda: step(idx, pos)):.3f} ms")
        logits_out = lambda: step(idx, pos).cpu().numpy()  # noqa: E731
        log(f"  step + logits to the host: {ms_per_call(logits_out):.3f} ms")
        logits = logits_out()
        log(f"  sampler greedy: {ms_per_call(lambda: sample_next(logits, rng, 0, None, None)):.3f} ms; top_k 200 T0.8: "
            f"{ms_per_call(lambda: sample_next(logits, rng, 0.8, 200, None)):.3f} ms")
        kernels(lambda: step(idx, pos), "reduce-overhead")

        compiled = torch.compile(model.decode_step, fullgraph=True, dynamic=False)  # Inductor's defaults
        by_hand = CapturedStep(compiled, idx, pos, model.kv_cache)
        graph, out = by_hand.graph, by_hand.logits
        log(f"  Inductor's defaults, captured by hand: replay+sync {ms_per_call(graph.replay):.3f} ms; "
            f"host {host_ms(graph.replay):.3f} ms")
        token_by_hand = lambda: sample_next(by_hand(idx, pos).numpy(), rng, 0, None, None)  # noqa: E731
        log(f"  token by hand (inputs, replay, logits to the host, greedy): {ms_per_call(token_by_hand):.3f} ms")
        kernels(graph.replay, "Inductor's defaults, by hand")
        eager_graph, _ = capture(model.decode_step, idx, pos)
        log(f"  eager step, captured by hand: replay+sync {ms_per_call(eager_graph.replay):.3f} ms")
        kernels(eager_graph.replay, "eager, by hand", top=6)
        for options in ({"coordinate_descent_tuning": True}, {"max_autotune": True}):
            torch._dynamo.reset()
            start = time.perf_counter()
            tuned_step = torch.compile(model.decode_step, fullgraph=True, dynamic=False, options=options)
            tuned_graph, tuned = capture(tuned_step, idx, pos)
            log(f"  {options}: compile {time.perf_counter() - start:.0f} s, "
                f"replay+sync {ms_per_call(tuned_graph.replay):.3f} ms")
            kernels(tuned_graph.replay, str(options), top=6)
            log(f"    max abs difference from Inductor's defaults' logits: {(tuned - out).abs().max().item():.3g}")
    model.kv_cache = None


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_profile: no CUDA device here (torch.cuda.is_available() is False)")
    log(torch.__version__, torch.cuda.get_device_name())
    for name in sys.argv[1:] or ["124M", "XL"]:
        profile(name)
