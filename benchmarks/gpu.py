"""GPU benchmarks of the torch backend (issue 10): decoding at batch 1 and 8, and a 1024-token prefill, bfloat16.

    uv run python -m benchmarks.gpu                 # needs CUDA; prints a Markdown table, writes gpu_results.json
    uv run python -m benchmarks.gpu --device cpu --shapes tiny   # the same code on a CPU, a smoke run (writes nothing)

GPT-2 124M and XL shapes with random weights (speed does not depend on the values): nothing is downloaded or
written first. Contenders, alternating per round, the median of --reps rounds after one warm-up round (the
compiling ones compile in the warm-up):
- ours eager, and ours --compile (the decode step compiled whole and replayed as a CUDA graph);
- transformers' GPT2LMHeadModel.generate, eager (its dynamic cache), and with its static cache, which on a
  GPU makes generate compile the forward itself (cache_implementation="static"; its mode="reduce-overhead";
  on a CPU smoke run it stays uncompiled);
- at batch 8 (8 copies of the prompt, tokens/s over all rows): ours --compile, and transformers eager.
Every contender decodes greedily (transformers samples on the GPU, ours on the CPU through the shared
sampler; greedy keeps that difference out): tokens/s = new tokens / time of the whole generate call.

Roofline: decoding one token reads every weight once, so HBM bandwidth (a device-to-device copy of 1 GiB,
read + write bytes over its time) / weight bytes per token is the most tokens/s any implementation reaches.
Prefill: one forward of 1024 tokens into an empty cache, FLOP counted as 2 per multiply-add: the block
matrices for every token, the causal attention scores and values (2 x n_layer x T^2 x C), and the lm_head
for the last position only.
"""

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from gpt2_torch import GPT
import weights
from weights import GPTConfig
from weights.sampling import cache_length

SHAPES = {
    "124M": GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768),
    "XL": GPTConfig(block_size=1024, vocab_size=50257, n_layer=48, n_head=25, n_embd=1600),
    "tiny": GPTConfig(block_size=256, vocab_size=512, n_layer=2, n_head=2, n_embd=64),  # for --device cpu smoke runs
}
PROMPT_TOKENS, NEW_TOKENS, PREFILL_TOKENS = 8, 128, 1024
RESULTS = Path(__file__).with_name("gpu_results.json")  # the GPU run the report quotes
BATCH = 8
CONTENDERS = ("ours eager", "ours --compile", "transformers eager", "transformers static+compile",
              f"ours --compile, batch {BATCH}", f"transformers eager, batch {BATCH}")


def prefill_flop(config, T):
    c = config
    return 2 * T * c.n_layer * 12 * c.n_embd**2 + 2 * c.n_layer * T * T * c.n_embd + 2 * c.n_embd * c.vocab_size


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(config, device, dtype, compiled):
    with torch.device(device):
        model = GPT(config)  # nn.Linear's own random initialisation
    model = model.to(dtype).eval()
    return model.compile_decode_step() if compiled else model


def theirs(config, device, dtype, static_compiled):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    hf = GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                    n_layer=config.n_layer, n_head=config.n_head)
    with torch.device(device):
        model = GPT2LMHeadModel(hf)
    model = model.to(dtype).eval()
    if static_compiled:
        # With a static cache on a GPU, transformers' generate compiles the forward itself (mode="reduce-overhead",
        # its documented path since 4.48). Compiling model.forward by hand around it, as older docs did, fails in
        # transformers 5: its cache's in-place length counter makes the CUDA graph overwrite its own outputs.
        model.generation_config.cache_implementation = "static"
    return model


def decoder(name, config, device, dtype):
    """A function that decodes NEW_TOKENS greedily after an 8-token prompt (in BATCH rows for a batch
    contender) and returns how many tokens it made, over all rows."""
    rows = BATCH if name.endswith(f"batch {BATCH}") else 1
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, size=(1, PROMPT_TOKENS)).repeat(rows, axis=0)
    if name.startswith("ours"):
        model = ours(config, device, dtype, compiled="--compile" in name)

        def decode_ours():
            return model.generate(prompt, NEW_TOKENS, temperature=0)[:, PROMPT_TOKENS:].size

        decode_ours.model = model  # for step_alone
        return decode_ours
    model = theirs(config, device, dtype, static_compiled="static+compile" in name)
    ids = torch.from_numpy(prompt).to(device)

    def decode():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, pad_token_id=0)
        return out[:, PROMPT_TOKENS:].numel()

    return decode


def copy_bandwidth(device, nbytes=1 << 30):
    """Bytes read and written per second by a device-to-device copy of nbytes: the best of 10."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(11):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / min(times[1:])


def step_alone(model, device, steps=200):
    """The compiled decode step of batch 1 without the generation around it, called steps times at one position
    in the cache a generation of NEW_TOKENS uses (the graph that generation captured; on CUDA a call copies the
    inputs in, replays the graph and copies the logits out to the host): seconds per step, and how many kernels
    one step runs on the GPU (0 on a CPU). A token of generate takes this step plus the host's share: the
    sampler, the token and position made into tensors, generate's own Python."""
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    pos = torch.tensor([PROMPT_TOKENS], device=device)
    with torch.inference_mode():
        model.allocate_kv_cache(1, cache_length(PROMPT_TOKENS, NEW_TOKENS, model.config.block_size))
        model(torch.zeros((1, PROMPT_TOKENS), dtype=torch.long, device=device), 0)
        for _ in range(3):
            model.compiled_decode_step(idx, pos)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            model.compiled_decode_step(idx, pos)
        synchronize(device)
        seconds = (time.perf_counter() - start) / steps
        kernels = 0
        if device.type == "cuda":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
                model.compiled_decode_step(idx, pos)
                synchronize(device)
            kernels = sum(1 for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA
                          and not e.name.startswith(("Memcpy", "Memset")))  # the replay's input copies aside
    model.kv_cache = None
    return seconds, kernels


def prefill_seconds(config, device, dtype, reps):
    model = ours(config, device, dtype, compiled=False)
    T = min(PREFILL_TOKENS, config.block_size)
    idx = torch.from_numpy(np.random.default_rng(1).integers(0, config.vocab_size, size=(1, T))).to(device)
    times = []
    with torch.inference_mode():
        model.allocate_kv_cache(1, T)
        for _ in range(reps + 1):
            synchronize(device)
            start = time.perf_counter()
            model(idx, 0)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return T, statistics.median(times[1:])


def measure(shape, device, dtype, reps, log):
    config = SHAPES[shape]
    decoders = {name: decoder(name, config, device, dtype) for name in CONTENDERS}
    runs = {name: [] for name in CONTENDERS}
    for rnd in range(reps + 1):
        for name, decode in decoders.items():
            synchronize(device)
            start = time.perf_counter()
            tokens = decode()
            synchronize(device)
            seconds = time.perf_counter() - start
            note = " (warm-up, compiles)" if not rnd else ""
            log(f"  {shape} round {rnd}{note}: {name} {tokens / seconds:.1f} tokens/s ({seconds:.2f} s)")
            if rnd:
                runs[name].append(tokens / seconds)
    step, kernels = step_alone(decoders["ours --compile"].model, device)
    del decoders
    T, prefill = prefill_seconds(config, device, dtype, reps)
    tps = {name: statistics.median(r) for name, r in runs.items()}
    bandwidth = copy_bandwidth(device)
    roofline = bandwidth / (weights.parameter_count(config) * torch.finfo(dtype).bits // 8)
    return {"tokens_per_s": tps, "tokens_per_s_runs": runs, "copy_bandwidth_GBps": bandwidth / 1e9,
            "roofline_tokens_per_s": roofline,
            "fraction_of_roofline": {name: t / roofline for name, t in tps.items() if "batch" not in name},
            "compiled_vs_transformers_eager": tps["ours --compile"] / tps["transformers eager"],
            "compiled_vs_transformers_static_compiled": tps["ours --compile"] / tps["transformers static+compile"],
            "batch_vs_batch_1": tps[f"ours --compile, batch {BATCH}"] / tps["ours --compile"],
            "batch_vs_transformers_batch": tps[f"ours --compile, batch {BATCH}"] / tps[f"transformers eager, batch {BATCH}"],
            "compiled_step_alone_ms": 1e3 * step, "compiled_step_kernels": kernels,
            "compiled_token_ms": 1e3 / tps["ours --compile"],
            "prefill_tokens": T, "prefill_seconds": prefill, "prefill_TFLOPs": prefill_flop(config, T) / prefill / 1e12}


def targets(results):
    """Issue 10's GPU targets against a run's results: (target, required, measured, met), for the shapes run;
    none for a run in another dtype than the targets' bfloat16."""
    rows, shapes = [], results["shapes"]
    if results["dtype"] != "bfloat16":
        return rows
    if "124M" in shapes:
        r = shapes["124M"]
        rows += [("124M, bfloat16 batch 1: --compile decode vs transformers eager generate", ">= 10x",
                  f"{r['compiled_vs_transformers_eager']:.1f}x", r["compiled_vs_transformers_eager"] >= 10),
                 ("124M, bfloat16 batch 1: --compile decode vs transformers static cache, compiled", ">= 1.3x",
                  f"{r['compiled_vs_transformers_static_compiled']:.2f}x",
                  r["compiled_vs_transformers_static_compiled"] >= 1.3)]
    if "XL" in shapes:
        fraction = shapes["XL"]["fraction_of_roofline"]["ours --compile"]
        rows.append(("XL, bfloat16 batch 1: --compile decode, fraction of the HBM roofline", ">= 60%",
                     f"{100 * fraction:.0f}%", fraction >= 0.6))
    return rows


def markdown(results):
    lines = [f"Device: {results['device']}; torch {results['torch']}; {results['dtype']}, greedy, "
             f"{PROMPT_TOKENS}-token prompt + {NEW_TOKENS} new tokens; median of {results['reps']} rounds.", "",
             "| shape | " + " | ".join(CONTENDERS) + " | --compile vs transformers eager | vs static+compile "
             f"| --compile, fraction of HBM roofline | batch {BATCH} vs batch 1 (--compile) "
             f"| batch {BATCH} vs transformers batch {BATCH} | prefill TFLOP/s |",
             "|---" * (len(CONTENDERS) + 7) + "|"]
    for shape, r in results["shapes"].items():
        cells = [f"{r['tokens_per_s'][c]:.0f}" for c in CONTENDERS]
        lines.append(f"| {shape} | " + " | ".join(cells) + f" | {r['compiled_vs_transformers_eager']:.1f}x | "
                     f"{r['compiled_vs_transformers_static_compiled']:.2f}x | "
                     f"{100 * r['fraction_of_roofline']['ours --compile']:.0f}% of {r['roofline_tokens_per_s']:.0f} "
                     f"({r['copy_bandwidth_GBps']:.0f} GB/s) | {r['batch_vs_batch_1']:.1f}x | "
                     f"{r['batch_vs_transformers_batch']:.1f}x | {r['prefill_TFLOPs']:.1f} |")
    if all("compiled_step_alone_ms" in r for r in results["shapes"].values()):  # runs since 2026-12-04 evening
        lines += ["", "Where a --compile token's time goes at batch 1: the step alone (its graph replayed, the logits "
                      "copied to the host; no sampler), and the rest of a generate token (the host's share, with the "
                      f"eager {PROMPT_TOKENS}-token prompt pass spread over the {NEW_TOKENS} tokens).", "",
                  "| shape | token (ms) | step alone (ms) | host's share (ms) | GPU kernels a step |", "|---|---|---|---|---|"]
        for shape, r in results["shapes"].items():
            token, step = r["compiled_token_ms"], r["compiled_step_alone_ms"]
            lines.append(f"| {shape} | {token:.3f} | {step:.3f} | {token - step:.3f} | {r['compiled_step_kernels']} |")
    return "\n".join(lines)


def committed_results():
    """The GPU run in RESULTS, or None if it holds none (no file, or a CPU smoke run's). The report runs on the
    CPU; its GPU figures come from that separate run."""
    if not RESULTS.exists():
        return None
    results = json.loads(RESULTS.read_text())
    return results if results.get("device", "cpu") != "cpu" else None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--shapes", nargs="+", default=["124M", "XL"], choices=list(SHAPES))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", help="write the results here (JSON); default: benchmarks/gpu_results.json, the file the "
                                 "report reads, on a GPU; nothing on a CPU (a smoke run)")
    p.add_argument("--merge", action="store_true", help="keep the other shapes of --out when it holds a run of the "
                                                         "same device, dtype and torch (one shape per process)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device here (torch.cuda.is_available() is False)")
    dtype = getattr(torch, args.dtype)
    log = lambda message: print(message, flush=True)  # noqa: E731
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "torch": torch.__version__, "dtype": args.dtype, "reps": args.reps,
               "shapes": {shape: measure(shape, device, dtype, args.reps, log) for shape in args.shapes}}
    out = Path(args.out) if args.out else RESULTS if device.type == "cuda" else None
    if out is not None:
        same_run = ("device", "dtype", "torch")
        if args.merge and out.exists():
            before = json.loads(out.read_text())
            if all(before.get(k) == results[k] for k in same_run):
                results["shapes"] = {**before["shapes"], **results["shapes"]}
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
