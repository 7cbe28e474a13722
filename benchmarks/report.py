"""Measure the speed targets in one run and rewrite BENCHMARKS.md, benchmarks/results.json and results.png.

    uv run python -m benchmarks.report                         # about an hour on 2 cores
    uv run python -m benchmarks.report --reps 3                # fewer repetitions, faster
    uv run python -m benchmarks.report --llama-cpp DIR         # llama.cpp too (benchmarks/llama_cpp.py)

How it measures:
- Every contender (torch and NumPy backends, transformers; float32 and bfloat16) runs in its own worker
  process, started once; the workers take turns, A B C D E A B C D E ..., so that a slow spell of the
  machine falls on all of them alike, and each figure is the median of --reps turns (after one warm-up turn).
- The workers run without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which pin OpenBLAS (NumPy's BLAS) to an
  older kernel on the development machines: the kernel each worker really uses is recorded (threadpoolctl).
- Decoding: batch 1, an 8-token prompt, 128 new tokens, top_k 200, temperature 0.8, as generate() runs it
  (prompt, sampling and all): tokens/s = 128 / seconds. transformers runs generate(do_sample=True) with
  min_new_tokens=128, so it never stops early.
- Batched decoding: 8 samples of one 8-token prompt, 128 new tokens each, as sample.py draws them (the prompt
  once, then one step for all 8, a random stream per sample); tokens/s = 8 x 128 / seconds. transformers runs
  generate(num_return_sequences=8).
- Prefill: one forward of 1024 tokens into an empty KV cache, logits of the last position only (as the first
  step of generate). transformers gets logits_to_keep=1, which its own generate uses, so all do the same work.
- Roofline: decoding one token reads every weight once. Read bandwidth (GB/s) / bytes read per token = the
  most tokens/s any implementation could reach on this machine. The bandwidth is measured once a round with
  several read kernels over 1 GiB (sums, matrix-vector products); the roofline takes the best of the run.
- llama.cpp (--llama-cpp DIR): f32 and f16 GGUFs of the same checkpoint take their turns in the same rounds;
  each figure of ours is also set against llama.cpp's of the same round (float32 against f32, bfloat16 against
  f16), and the median of those per-round ratios is reported, over the rounds where llama.cpp f32 decodes at
  >= 100 tokens/s (a fast memory bus) and over all rounds.
- Peak RSS while sampling: a fresh process per backend (and per batch: 1 and 8 samples) runs a tiny model first (so that the libraries' own
  memory is in place), takes its RSS as the baseline, loads the model, resets its peak (writing 5 to
  /proc/self/clear_refs sets VmHWM to the current RSS), samples 128 tokens, and reads VmHWM - baseline.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import weights
from weights.sampling import cache_length, row_generators
from benchmarks import common

ROOT = Path(__file__).resolve().parent.parent
PROMPT_TOKENS, NEW_TOKENS, TOP_K, TEMPERATURE = 8, 128, 200, 0.8
PREFILL_TOKENS = 1024
BATCH = 8  # samples decoded together in the batched measurement
FAST_BUS_TOKENS_PER_S = 100  # llama.cpp f32 decoding at least this fast: a round on a fast memory bus (>= 50 GB/s)
BANDWIDTH_BUFFER = 1 << 30  # 1 GiB, far larger than the L3 cache, so a sum over it reads main memory
MARK_BEGIN, MARK_END = "<!-- report:begin -->", "<!-- report:end -->"


# --- inside a worker process ------------------------------------------------------------------------

def worker(contender):
    """Load one contender, then answer JSON commands on stdin, one per line, with one JSON line each."""
    backend, dtype = contender.split("-")
    if backend != "numpy":  # the NumPy worker imports no framework, as a NumPy user would not
        import torch
    model = common.load(contender)
    prompt = common.prompt(PROMPT_TOKENS)
    long_prompt = common.prompt(PREFILL_TOKENS, seed=1)
    info = worker_info(backend, model)
    if backend == "torch+compile":  # compile now, on the decode's own shapes, and time what a user waits
        info["seconds_to_second_token"] = seconds_to_second_token(model, prompt)

    def decode(seed, batch):
        """Tokens generated: batch samples of NEW_TOKENS from the prompt; batch 1 draws from one generator."""
        if backend == "transformers":
            torch.manual_seed(seed)
            ids = torch.from_numpy(prompt)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=TOP_K,
                                 temperature=TEMPERATURE, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 num_return_sequences=batch, pad_token_id=model.config.eos_token_id)
        else:
            rng = np.random.default_rng(seed) if batch == 1 else row_generators(seed, range(batch))
            out = model.generate(prompt, NEW_TOKENS, temperature=TEMPERATURE, top_k=TOP_K, rng=rng)
        return (out.shape[1] - PROMPT_TOKENS) * out.shape[0]

    def prefill():
        if backend == "transformers":
            model(torch.from_numpy(long_prompt), use_cache=True, logits_to_keep=1)
        elif backend.startswith("torch"):  # the prompt runs eagerly with --compile too
            model.allocate_kv_cache(1)
            model(torch.from_numpy(long_prompt), 0)
        else:
            model.allocate_kv_cache(1)
            model(long_prompt, 0)

    send({"ready": True, "info": info})
    for line in sys.stdin:
        command = json.loads(line)
        with no_autograd(backend):
            start = time.perf_counter()
            if command["op"] in ("decode", "batched"):
                tokens = decode(command["seed"], BATCH if command["op"] == "batched" else 1)
            elif command["op"] == "prefill":
                prefill()
                tokens = PREFILL_TOKENS
            else:
                return
            send({"seconds": time.perf_counter() - start, "tokens": tokens})


def seconds_to_second_token(model, prompt):
    """How long the first generate of a freshly compiled model takes to yield its second token: the first comes
    from the eager prefill, the second from the first call of the compiled decode step, which compiles it."""
    start = time.perf_counter()
    steps = model.generate_tokens(prompt, NEW_TOKENS, TEMPERATURE, TOP_K, rng=np.random.default_rng(0))
    next(steps), next(steps)
    seconds = time.perf_counter() - start
    for _ in steps:  # the rest, so that every step has run once
        pass
    return seconds


def no_autograd(backend):
    """torch.inference_mode for the torch contenders (as their generate), nothing for NumPy."""
    if backend == "numpy":
        return contextlib.nullcontext()
    import torch

    return torch.inference_mode()


def worker_info(backend, model):
    from threadpoolctl import threadpool_info

    info = {"threadpools": [{k: i.get(k) for k in ("internal_api", "prefix", "version", "architecture", "num_threads")}
                            for i in threadpool_info()]}
    if backend != "numpy":
        import torch

        config = torch.__config__.show()
        info["torch"], info["torch_threads"] = torch.__version__, torch.get_num_threads()
        info["torch_blas"] = (re.search(r"BLAS_INFO=(\w+)", config) or [None, "?"])[1]
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if backend == "transformers":
        import transformers

        info["transformers"] = transformers.__version__
        info["attn_implementation"] = model.config._attn_implementation
    return info


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def status_kib():
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f if line.startswith(("VmRSS", "VmHWM"))}


def peak_rss(contender, batch):
    """Peak RSS while sampling batch samples, in a fresh process: see the module docstring."""
    import gc

    import tempfile

    backend, dtype = contender.split("-")
    # The same steps on a tiny model first, so that the libraries' own memory (lazy imports, BLAS buffers,
    # thread pools) is in the baseline and only the model's is measured.
    tiny = weights.GPTConfig(block_size=16, vocab_size=512, n_layer=1, n_head=2, n_embd=16)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights.save(f"{tmp}/tiny.safetensors", tiny, {name: rng.standard_normal(shape, dtype=np.float32)
                                                       for name, shape in weights.parameter_shapes(tiny).items()})
        with no_autograd(backend):
            common.load(contender, f"{tmp}/tiny.safetensors").generate(common.prompt(4, 512), 4, top_k=TOP_K)
    gc.collect()
    baseline = status_kib()["VmRSS"]
    model = common.load(contender)
    gc.collect()
    loaded = status_kib()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS: the peak from here on is the peak while sampling
    with no_autograd(backend):
        model.generate(common.prompt(PROMPT_TOKENS), NEW_TOKENS, temperature=TEMPERATURE, top_k=TOP_K,
                       rng=row_generators(0, range(batch)))
    after = status_kib()
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, including the loading
    model.allocate_kv_cache(batch, cache_length(PROMPT_TOKENS, NEW_TOKENS, model.config.block_size))  # generate's
    kv_cache_bytes = sum(layer.k.nbytes + layer.v.nbytes for layer in model.kv_cache)
    send({"baseline_kib": baseline, "loaded_kib": loaded, "peak_kib": after["VmHWM"], "ru_maxrss_kib": ru_maxrss,
          "weight_bytes": weights.parameter_count(model.config) * {"float32": 4, "bfloat16": 2}[dtype],
          "kv_cache_bytes": kv_cache_bytes, "batch": batch})


def bandwidth_worker():
    """Main-memory read bandwidth, GB/s, on request: several read kernels over 1 GiB (far larger than the L3
    cache), sums and matrix-vector products (the read decoding does), each the best of 3 passes."""
    import torch
    from threadpoolctl import threadpool_info

    buffer = np.ones(BANDWIDTH_BUFFER // 4, np.float32)
    n = int(np.sqrt(buffer.size))
    matrix, x = buffer[: n * n].reshape(n, n), np.ones((1, n), np.float32)  # (n, n) with n * n * 4 bytes = 1 GiB
    tensor, tmatrix, tx = torch.from_numpy(buffer), torch.from_numpy(matrix), torch.from_numpy(x)
    blas = next((f"{i['internal_api']} {i['num_threads']} threads"
                 for i in threadpool_info() if i["user_api"] == "blas"), "?")
    threads = torch.get_num_threads()
    kernels = {
        "numpy sum (1 thread)": (buffer.sum, buffer.nbytes),
        f"torch sum ({threads} threads)": (tensor.sum, buffer.nbytes),
        f"numpy x @ W ({blas})": (lambda: x @ matrix, matrix.nbytes),
        f"torch x @ W (MKL, {threads} threads)": (lambda: tx @ tmatrix, matrix.nbytes),
    }
    for read, _ in kernels.values():
        read()
    send({"ready": True, "info": {}})
    for line in sys.stdin:
        if json.loads(line)["op"] != "bandwidth":
            return
        result = {}
        for name, (read, nbytes) in kernels.items():
            times = []
            for _ in range(3):
                start = time.perf_counter()
                read()
                times.append(time.perf_counter() - start)
            result[name] = nbytes / min(times) / 1e9
        send(result)


# --- the parent: workers, alternation, results ------------------------------------------------------

def bytes_per_token(config, itemsize):
    """Bytes of weights one decoding step reads: what the roofline divides the bandwidth by."""
    sizes = {name: int(np.prod(shape)) * itemsize for name, shape in weights.parameter_shapes(config).items()}
    matrices = sum(size for name, size in sizes.items() if name.endswith(weights.loader.MATRICES))
    embeddings = sizes["wte.weight"] + sizes["wpe.weight"]
    return {"matrices (c_attn, attn.c_proj, c_fc, mlp.c_proj)": matrices,
            "biases and LayerNorm parameters": sum(sizes.values()) - matrices - embeddings,
            "wte, read once by the tied lm_head": sizes["wte.weight"],
            "one row of wte and one of wpe (embedding)": 2 * config.n_embd * itemsize}


def worker_env():
    env = {k: v for k, v in os.environ.items() if k not in common.OPENBLAS_PINS}
    env.pop("PYTHONPATH", None)
    return env


def run_once(*flags):
    args = [sys.executable, "-m", "benchmarks.report", *map(str, flags)]
    result = subprocess.run(args, cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[2:])} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class Worker:
    def __init__(self, contender):
        self.contender = contender
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.report", "--worker", contender], cwd=ROOT,
                                        env=worker_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self.receive()["info"]

    def receive(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.contender} died (its stderr is above)")
        return json.loads(line)

    def ask(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.receive()

    def close(self):
        self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)


def alternate(workers, op, reps, log, meter, bandwidths):
    """reps + 1 rounds of one op, each worker in turn; the first round is a warm-up and is dropped. The memory
    bandwidth is measured once a round too (appended to bandwidths): the roofline takes the best of the run."""
    runs = {w.contender: [] for w in workers}
    for rnd in range(reps + 1):
        bandwidths.append(meter.ask(op="bandwidth"))
        for w in workers:
            reply = w.ask(op=op, seed=rnd)
            if rnd:
                runs[w.contender].append(reply)
            log(f"  {op} round {rnd}{' (warm-up)' if not rnd else ''}: {w.contender} {reply['seconds']:.3f} s")
    return runs


def cpu_busy_seconds():
    """CPU seconds spent by the whole machine so far (all processes, all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def machine_info():
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    caches = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith(("L2 cache", "L3 cache")):
                caches[line.split(":")[0]] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), **caches,
            "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform(),
            "openblas_pins_in_environment": {k: os.environ[k] for k in common.OPENBLAS_PINS if k in os.environ}}


def measure(reps, log, llama_dir=None):
    config, _ = weights.load(common.checkpoint())
    started, busy0 = time.time(), cpu_busy_seconds()
    children0, self0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    load_start = os.getloadavg()
    log("starting the workers ...")
    workers = [Worker(c) for c in common.CONTENDERS]
    if llama_dir:
        from benchmarks import llama_cpp

        log(f"llama.cpp: GGUFs of {common.CHECKPOINT.name} ...")
        ggufs = llama_cpp.convert(llama_dir, common.checkpoint(), common.CACHE_DIR / "gguf")
        workers += [llama_cpp.LlamaCppWorker(llama_dir, path, dtype, PROMPT_TOKENS, NEW_TOKENS, PREFILL_TOKENS, BATCH)
                    for dtype, path in ggufs.items()]
    meter, bandwidths = Worker("bandwidth"), []
    try:
        log(f"decoding: {PROMPT_TOKENS}-token prompt + {NEW_TOKENS} tokens, {reps} rounds + 1 warm-up")
        decode_runs = alternate(workers, "decode", reps, log, meter, bandwidths)
        log(f"batched decoding: {BATCH} samples of {NEW_TOKENS} tokens, {reps} rounds + 1 warm-up")
        batched_runs = alternate(workers, "batched", reps, log, meter, bandwidths)
        log(f"prefill: {PREFILL_TOKENS} tokens, {reps} rounds + 1 warm-up")
        prefill_runs = alternate(workers, "prefill", reps, log, meter, bandwidths)
    finally:
        for w in [*workers, meter]:
            w.close()
    log(f"  bandwidth, best of the run: {best_bandwidth(bandwidths)}")
    log("peak RSS, one fresh process per backend and batch ...")
    backends = ("torch-float32", "torch-bfloat16", "numpy-float32")
    rss = {c: run_once("--rss", c, "--rss-batch", 1) for c in backends}
    rss_batched = {c: run_once("--rss", c, "--rss-batch", BATCH) for c in backends}
    llama = {}
    if llama_dir:  # kept apart: the tables of ours compare with transformers, which has no float16 contender
        llama_runs = [{c: runs.pop(c) for c in list(runs) if c.startswith("llama.cpp")}
                      for runs in (decode_runs, batched_runs, prefill_runs)]
        llama = {**summarise_ops(*llama_runs),
                 "info": {w.contender: w.info for w in workers if w.contender.startswith("llama.cpp")}}
    wall = time.time() - started
    ours = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours_cpu = (ours.ru_utime + ours.ru_stime) - (children0.ru_utime + children0.ru_stime)
    self_cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - sum(self0[:2])
    others = max(0.0, cpu_busy_seconds() - busy0 - ours_cpu - self_cpu) / wall  # cores busy with other work
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "workers": {w.contender: w.info for w in workers if not w.contender.startswith("llama.cpp")},
        "settings": {"batch": 1, "batched": BATCH, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
                     "top_k": TOP_K,
                     "temperature": TEMPERATURE, "prefill_tokens": PREFILL_TOKENS, "reps": reps,
                     "model": "GPT-2 124M shape (12 layers, 12 heads, 768 wide, vocabulary 50257), random weights",
                     "checkpoint": str(common.CHECKPOINT), "workers_without": list(common.OPENBLAS_PINS)},
        "load": {"loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg(),
                 "other_processes_cores_busy": round(others, 2), "wall_seconds": round(wall, 1)},
        "bandwidth_GBps": best_bandwidth(bandwidths),
        "bandwidth_runs_GBps": bandwidths,
        # the bandwidth measured at the start of each kept decoding round (round 0, the warm-up, is dropped)
        "decode_round_bandwidth_GBps": [max(run.values()) for run in bandwidths[1 : reps + 1]],
        "batched_round_bandwidth_GBps": [max(run.values()) for run in bandwidths[reps + 2 : 2 * reps + 2]],
        "bytes_per_token": {"float32": bytes_per_token(config, 4), "bfloat16": bytes_per_token(config, 2)},
        **summarise_ops(decode_runs, batched_runs, prefill_runs),
        "rss": rss,
        "rss_batched": rss_batched,
        **({"llama_cpp": llama} if llama else {}),
    }


def best_bandwidth(runs):
    return {kernel: max(run[kernel] for run in runs) for kernel in runs[0]}


def summarise_ops(decode_runs, batched_runs, prefill_runs):
    """Each contender's medians and runs: decoding in tokens/s, prefill in seconds."""
    per_second = lambda r: r["tokens"] / r["seconds"]  # noqa: E731
    return {"decode": summarise(decode_runs, per_second, "tokens_per_s"),
            "batched": summarise(batched_runs, per_second, "tokens_per_s"),
            "prefill": summarise(prefill_runs, lambda r: r["seconds"], "seconds")}


def summarise(runs, value, unit):
    return {c: {f"{unit}_median": statistics.median(map(value, rs)), f"{unit}_runs": [round(value(r), 4) for r in rs]}
            for c, rs in runs.items()}


# --- targets, tables, chart -------------------------------------------------------------------------

def evaluate(results):
    """Derived figures, and each target of issue 6 with its measured value and whether it is met."""
    bw = max(results["bandwidth_GBps"].values())
    tps = {c: d["tokens_per_s_median"] for c, d in results["decode"].items()}
    secs = {c: d["seconds_median"] for c, d in results["prefill"].items()}
    roofline = {dt: bw * 1e9 / sum(parts.values()) for dt, parts in results["bytes_per_token"].items()}
    fraction = {c: tps[c] / roofline[c.split("-")[1]] for c in tps}
    # The host's bandwidth moves between rounds (other virtual machines share the memory bus): each decoding
    # run against the roofline of its own round too, for the record; the targets use the best of the run.
    per_token = {dt: sum(parts.values()) for dt, parts in results["bytes_per_token"].items()}
    round_fraction = {c: statistics.median(t * per_token[c.split("-")[1]] / (b * 1e9) for t, b in
                                           zip(d["tokens_per_s_runs"], results["decode_round_bandwidth_GBps"]))
                      for c, d in results["decode"].items()}
    derived = {"bandwidth_GBps": bw, "roofline_tokens_per_s": roofline, "fraction_of_roofline": fraction,
               "fraction_of_round_roofline": round_fraction,
               "decode_vs_transformers": {c: tps[c] / tps["transformers-" + c.split("-")[1]] for c in tps},
               "prefill_vs_transformers": {c: secs["transformers-" + c.split("-")[1]] / secs[c] for c in secs}}
    rss = {c: (r["peak_kib"] - r["baseline_kib"]) * 1024 for c, r in results["rss"].items()}
    rss_limit = {c: 1.3 * r["weight_bytes"] + r["kv_cache_bytes"] for c, r in results["rss"].items()}
    derived["rss_used_bytes"], derived["rss_limit_bytes"] = rss, rss_limit
    # batch 8: the limit is 1.3 x (weights + the KV cache of 8 sequences), issue 11's
    rss8 = {c: (r["peak_kib"] - r["baseline_kib"]) * 1024 for c, r in results["rss_batched"].items()}
    rss8_limit = {c: 1.3 * (r["weight_bytes"] + r["kv_cache_bytes"]) for c, r in results["rss_batched"].items()}
    derived["rss_batched_used_bytes"], derived["rss_batched_limit_bytes"] = rss8, rss8_limit
    batched = {c: d["tokens_per_s_median"] for c, d in results["batched"].items()}
    derived["batched_vs_batch_1"] = {c: batched[c] / tps[c] for c in batched}
    derived["batched_vs_transformers"] = {c: batched[c] / batched["transformers-" + c.split("-")[1]] for c in batched}
    vs, pv = derived["decode_vs_transformers"], derived["prefill_vs_transformers"]
    bv, b1 = derived["batched_vs_transformers"], derived["batched_vs_batch_1"]

    def target(name, measured, required, unit, at_most=False):
        show = {"x": lambda v: f"{v:.2f}x", "%": lambda v: f"{100 * v:.0f}%",
                "MiB": lambda v: f"{v / 2**20:.0f} MiB"}[unit]
        met = measured <= required if at_most else measured >= required
        return {"name": name, "target": f"{'<=' if at_most else '>='} {show(required)}", "measured": show(measured),
                "met": bool(met)}

    derived["targets"] = [
        target("torch float32 decode vs transformers float32 generate", vs["torch-float32"], 1.5, "x"),
        target("torch --compile float32 decode vs eager torch float32",
               tps["torch+compile-float32"] / tps["torch-float32"], 1.0, "x"),
        target("torch bfloat16 decode vs transformers bfloat16 generate", vs["torch-bfloat16"], 1.5, "x"),
        target("numpy float32 decode vs transformers float32 generate", vs["numpy-float32"], 2.0, "x"),
        target("torch float32 decode, fraction of the roofline", fraction["torch-float32"], 0.7, "%"),
        target("numpy float32 decode, fraction of the roofline", fraction["numpy-float32"], 0.7, "%"),
        target("prefill 1024 tokens: torch float32 vs transformers forward", pv["torch-float32"], 1.0, "x"),
        target("prefill 1024 tokens: numpy float32 vs transformers forward", pv["numpy-float32"], 0.8, "x"),
    ] + [target(f"peak RSS while sampling, {c}", rss[c], rss_limit[c], "MiB", at_most=True) for c in rss]
    derived["targets"] += [
        target(f"batch {BATCH} float32: numpy vs its own batch 1", b1["numpy-float32"], 5.0, "x"),
        target(f"batch {BATCH} float32: torch vs its own batch 1", b1["torch-float32"], 5.0, "x"),
    ] + [
        target(f"batch {BATCH} {c.split('-')[1]}: {c.split('-')[0]} vs transformers num_return_sequences={BATCH}",
               bv[c], 3.0, "x") for c in ("numpy-float32", "torch-float32", "torch-bfloat16")
    ] + [target(f"peak RSS while sampling {BATCH} samples, {c}", rss8[c], rss8_limit[c], "MiB", at_most=True)
         for c in rss8]
    if "llama_cpp" in results:
        derived["vs_llama_cpp"] = versus_llama_cpp(results)
        vl = derived["vs_llama_cpp"]
        derived["targets"] += [
            target("decode vs llama.cpp: numpy float32 / f32", vl["decode"]["numpy-float32"]["judged"], 0.85, "x"),
            target("decode vs llama.cpp: torch float32 / f32", vl["decode"]["torch-float32"]["judged"], 0.75, "x"),
            target("decode vs llama.cpp: torch bfloat16 / f16", vl["decode"]["torch-bfloat16"]["judged"], 0.85, "x"),
            *(target(f"decode vs llama.cpp: torch --compile {dtype} / {peer}",
                     vl["decode"][f"torch+compile-{dtype}"]["judged"], required, "x")
              for dtype, peer, required in (("float32", "f32", 0.75), ("bfloat16", "f16", 0.85))
              if f"torch+compile-{dtype}" in vl["decode"]),  # a results.json of before has no compiled bfloat16
            target("prefill vs llama.cpp: torch float32 / f32", vl["prefill"]["torch-float32"]["judged"], 0.9, "x"),
            target("prefill vs llama.cpp: numpy float32 / f32", vl["prefill"]["numpy-float32"]["judged"], 0.7, "x"),
            target("numpy float32 decode, fraction of the roofline (vs llama.cpp's issue)", fraction["numpy-float32"],
                   0.75, "%"),
            target("torch float32 decode, fraction of the roofline (vs llama.cpp's issue)", fraction["torch-float32"],
                   0.65, "%"),
        ]
    return derived


def versus_llama_cpp(results):
    """Each of our contenders against llama.cpp in the same rounds: float32 against f32, bfloat16 against f16.

    Per round, ours / llama.cpp's tokens/s (prefill: llama.cpp's seconds / ours); "all" is the median over every
    round. Decoding one sequence is bound by the memory bus, whose speed moves between rounds: there "fast" is
    the median over the rounds where llama.cpp f32 decoded at >= FAST_BUS_TOKENS_PER_S (where the gap shows),
    and "judged" is "fast" where there were such rounds, else "all". Batched decoding and prefill do many
    flops per weight read, so every round counts: "judged" is "all"."""
    llama = results["llama_cpp"]
    peer = {"float32": "llama.cpp-float32", "bfloat16": "llama.cpp-float16"}
    fast = [t >= FAST_BUS_TOKENS_PER_S for t in llama["decode"]["llama.cpp-float32"]["tokens_per_s_runs"]]
    out = {}
    for op, unit, ours_over_theirs in (("decode", "tokens_per_s", True), ("batched", "tokens_per_s", True),
                                       ("prefill", "seconds", False)):
        out[op] = {}
        for c, d in results[op].items():
            theirs = llama[op][peer[c.split("-")[1]]][f"{unit}_runs"]
            ratios = [(a / b if ours_over_theirs else b / a) for a, b in zip(d[f"{unit}_runs"], theirs)]
            on_fast = [r for r, f in zip(ratios, fast) if f] if op == "decode" else []
            out[op][c] = {"per_round": ratios, "all": statistics.median(ratios),
                          "fast": statistics.median(on_fast) if on_fast else None,
                          "judged": statistics.median(on_fast or ratios), "fast_rounds": len(on_fast)}
    return out


def markdown(results, derived):
    m, w, load = results["machine"], results["workers"], results["load"]
    numpy_blas = next((p for p in w["numpy-float32"]["threadpools"] if p["internal_api"] == "openblas"), {})
    torch_info = w["torch-float32"]
    pins = m["openblas_pins_in_environment"]
    lines = [
        f"Measured {results['date']} by `uv run python -m benchmarks.report` ({load['wall_seconds']:.0f} s).",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, L2 {m.get('L2 cache', '?')}, "
        f"L3 {m.get('L3 cache', '?')}, AVX-512: {m['avx512']}, AVX512-BF16: {m['avx512_bf16']}. "
        f"Python {m['python']}, NumPy {m['numpy']} with {numpy_blas.get('prefix')} {numpy_blas.get('version')} "
        f"(kernel **{numpy_blas.get('architecture')}**, {numpy_blas.get('num_threads')} threads); "
        f"torch {torch_info.get('torch')} (BLAS: {torch_info.get('torch_blas')}, CPU capability "
        f"{torch_info.get('torch_cpu_capability')}, {torch_info['torch_threads']} threads); "
        f"transformers {w['transformers-float32'].get('transformers')} "
        f"(attention: {w['transformers-float32'].get('attn_implementation')}).",
        "",
        "**Environment:** " + (f"{', '.join(f'{k}={v}' for k, v in pins.items())} set in the calling shell; "
                               if pins else "OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE not set in the calling shell; ")
        + "every worker process ran without both (the kernel above is the one the NumPy worker used).",
        "",
        f"**Machine load:** load average {load['loadavg_at_start'][0]:.2f} at the start, "
        f"{load['loadavg_at_end'][0]:.2f} at the end; other processes kept "
        f"{load['other_processes_cores_busy']:.2f} of the {m['cores']} cores busy on average during the run"
        + (" — the figures are slower than on an idle machine, the ratios less affected (the contenders alternate)."
           if load["other_processes_cores_busy"] > 0.2 else "."),
        "",
        "### Targets",
        "",
        "| target | required | measured | |",
        "|---|---|---|---|",
    ]
    for t in derived["targets"]:
        lines.append(f"| {t['name']} | {t['target']} | {t['measured']} | {'met' if t['met'] else '**not met**'} |")
    from benchmarks import gpu as gpu_benchmark  # imports torch: only here, not in the measuring workers

    gpu = gpu_benchmark.committed_results()
    if gpu:
        for name, required, measured, met in gpu_benchmark.targets(gpu):
            lines.append(f"| CUDA ({gpu['device']}, `benchmarks/gpu_results.json`): {name} | {required} | {measured} "
                         f"| {'met' if met else '**not met**'} |")
    else:
        lines.append("| CUDA, bfloat16: torch --compile decode vs transformers generate, eager / static cache compiled; "
                     "XL fraction of the HBM roofline | >= 10x / >= 1.3x; >= 60% | — | not measured: no GPU run in "
                     "benchmarks/gpu_results.json |")
    rs, s = results["settings"], results["decode"]
    lines += [
        "",
        f"### Decoding: batch 1, {rs['prompt_tokens']}-token prompt, {rs['new_tokens']} new tokens, "
        f"top_k {rs['top_k']}, temperature {rs['temperature']}",
        "",
        f"Median of {rs['reps']} runs each (tokens/s = {rs['new_tokens']} / time of the whole generate call).",
        "",
        "| contender | tokens/s | runs | vs transformers (same dtype) | roofline (tokens/s) | fraction of roofline "
        "| fraction of its round's roofline |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, d in s.items():
        dt = c.split("-")[1]
        runs = ", ".join(f"{v:.1f}" for v in d["tokens_per_s_runs"])
        lines.append(f"| {c} | {d['tokens_per_s_median']:.1f} | {runs} | "
                     f"{derived['decode_vs_transformers'][c]:.2f}x | {derived['roofline_tokens_per_s'][dt]:.1f} | "
                     f"{100 * derived['fraction_of_roofline'][c]:.0f}% | "
                     f"{100 * derived['fraction_of_round_roofline'][c]:.0f}% |")
    waits = {c.split("-")[1]: w[c]["seconds_to_second_token"] for c in w if c.startswith("torch+compile")}
    if waits:
        lines += ["", f"**--compile** (torch+compile: the decode step compiled whole by Inductor, the prompt eager): "
                      "the first sample's second token waited "
                      + ", ".join(f"{s:.1f} s in {dt}" for dt, s in waits.items()) + " for the compiler (the first "
                      "token comes from the eager prompt pass); later samples with a KV cache of the same length "
                      "reuse the graph."]
    bw = results["bandwidth_GBps"]
    b32 = results["bytes_per_token"]["float32"]
    lines += [
        "",
        "**Roofline.** Read bandwidth: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in bw.items())
        + f" over 1 GiB (far larger than the L3 cache), measured once a round, the best of the run; the roofline "
        f"uses the largest, {derived['bandwidth_GBps']:.1f} GB/s: no implementation can read faster. "
        "The host's bandwidth moves between rounds (the largest kernel per decoding round: "
        + ", ".join(f"{b:.0f}" for b in results["decode_round_bandwidth_GBps"])
        + " GB/s), so the last column also sets each run against its own round's bandwidth (median over the "
        "runs); the targets use the best of the run. "
        "Bytes of weights read per decoded token (float32; bfloat16 is half):",
        "",
    ]
    lines += [f"- {k}: {v / 1e6:.1f} MB" for k, v in b32.items()]
    lines += [f"- total: {sum(b32.values()) / 1e6:.1f} MB per token (the KV cache adds 2 x 12 x 768 x 4 bytes = "
              "74 kB per cached position, about 5 MB at the mean context of this run: 1%, left out).", ""]
    lines += [
        f"### Batched decoding: {rs['batched']} samples of one {rs['prompt_tokens']}-token prompt, "
        f"{rs['new_tokens']} new tokens each",
        "",
        f"As `sample.py --num_samples {rs['batched']}` draws them: the prompt once, then one step for all "
        f"{rs['batched']} sequences, each with its own random stream; transformers: `generate(num_return_sequences="
        f"{rs['batched']})`. Total tokens/s = {rs['batched']} x {rs['new_tokens']} / time of the whole generate call; "
        f"median of {rs['reps']} runs.",
        "",
        "| contender | tokens/s (all samples) | runs | vs its own batch 1 | vs transformers batch "
        f"{rs['batched']} (same dtype) |",
        "|---|---|---|---|---|",
    ]
    for c, d in results["batched"].items():
        runs = ", ".join(f"{v:.1f}" for v in d["tokens_per_s_runs"])
        lines.append(f"| {c} | {d['tokens_per_s_median']:.1f} | {runs} | {derived['batched_vs_batch_1'][c]:.2f}x | "
                     f"{derived['batched_vs_transformers'][c]:.2f}x |")
    lines.append("")
    p = results["prefill"]
    lines += [
        f"### Prefill: one forward of {rs['prefill_tokens']} tokens",
        "",
        "Into an empty KV cache, logits of the last position only (transformers: `logits_to_keep=1`, as in its "
        f"generate). Median of {rs['reps']} runs.",
        "",
        "| contender | seconds | runs | tokens/s | vs transformers (same dtype) |",
        "|---|---|---|---|---|",
    ]
    for c, d in p.items():
        lines.append(f"| {c} | {d['seconds_median']:.3f} | {', '.join(f'{v:.3f}' for v in d['seconds_runs'])} | "
                     f"{rs['prefill_tokens'] / d['seconds_median']:.0f} | "
                     f"{derived['prefill_vs_transformers'][c]:.2f}x |")
    lines += [
        "",
        "### Peak RSS while sampling",
        "",
        "A fresh process per backend: it first loads a tiny model of the same backend and samples from it (so "
        "that the libraries' own memory, lazy imports and thread pools, is in place), then takes its RSS as the "
        "baseline, loads GPT-2 124M and "
        "resets the peak (`echo 5 > /proc/self/clear_refs`: VmHWM := VmRSS), samples 128 tokens and reads VmHWM. "
        "Used = VmHWM - baseline. For comparison, ru_maxrss - baseline also counts the loading.",
        "",
        "| backend | weights | KV cache | limit 1.3 x weights + KV | resident after loading | peak while sampling "
        "| ru_maxrss (incl. loading) |",
        "|---|---|---|---|---|---|---|",
    ]
    mib = lambda v: f"{v / 2**20:.0f} MiB"  # noqa: E731
    for c, r in results["rss"].items():
        lines.append(f"| {c} | {mib(r['weight_bytes'])} | {mib(r['kv_cache_bytes'])} | "
                     f"{mib(derived['rss_limit_bytes'][c])} | "
                     f"{mib((r['loaded_kib'] - r['baseline_kib']) * 1024)} | {mib(derived['rss_used_bytes'][c])} | "
                     f"{mib((r['ru_maxrss_kib'] - r['baseline_kib']) * 1024)} |")
    lines += ["", f"Sampling {rs['batched']} samples at once (limit: 1.3 x (weights + the KV cache of "
                  f"{rs['batched']} sequences)):", "",
              "| backend | weights | KV cache | limit | peak while sampling |", "|---|---|---|---|---|"]
    for c, r in results["rss_batched"].items():
        lines.append(f"| {c} | {mib(r['weight_bytes'])} | {mib(r['kv_cache_bytes'])} | "
                     f"{mib(derived['rss_batched_limit_bytes'][c])} | {mib(derived['rss_batched_used_bytes'][c])} |")
    if "llama_cpp" in results:
        lines += ["", *llama_cpp_section(results, derived)]
    lines += ["", "![decode tokens/s, prefill and memory](benchmarks/results.png)"]
    if gpu:
        lines += ["", f"### On a GPU (`python -m benchmarks.gpu`, {gpu['date']}, not part of this run)", "",
                  gpu_benchmark.markdown(gpu)]
    else:
        lines += ["", "**GPU:** benchmarks/gpu_results.json holds no GPU run: the GPU targets (--compile with CUDA "
                      "graphs against transformers, the HBM roofline, prefill TFLOP/s; `python -m benchmarks.gpu`) "
                      "were not measured."]
    return "\n".join(lines)


def llama_cpp_section(results, derived):
    llama, vl, rs = results["llama_cpp"], derived["vs_llama_cpp"], results["settings"]
    build = next(iter(llama["info"].values()), {}).get("build")
    lines = [
        f"### Against llama.cpp (build {build}, {next(iter(llama['info'].values()), {}).get('threads')} threads)",
        "",
        "GGUFs of the same checkpoint (converted with llama.cpp's `convert_hf_to_gguf.py`), timed by llama.cpp "
        f"itself in the same rounds: `llama-bench -pg {rs['prompt_tokens']},{rs['new_tokens']}`, "
        f"`llama-bench -p {rs['prefill_tokens']} -n 0`, `llama-batched-bench -npp {rs['prompt_tokens']} "
        f"-ntg {rs['new_tokens']} -npl {rs['batched']}` (see benchmarks/llama_cpp.py).",
        "",
        "| llama.cpp | decode tokens/s (runs) | batched tokens/s (runs) | prefill seconds (runs) |",
        "|---|---|---|---|",
    ]
    for c in llama["decode"]:
        cells = [f"{llama[op][c][f'{u}_median']:.{n}f} ({', '.join(f'{v:.{n}f}' for v in llama[op][c][f'{u}_runs'])})"
                 for op, u, n in (("decode", "tokens_per_s", 1), ("batched", "tokens_per_s", 1),
                                  ("prefill", "seconds", 3))]
        lines.append(f"| {c} | {' | '.join(cells)} |")
    fast = vl["decode"]["numpy-float32"]["fast_rounds"]
    lines += [
        "",
        "Ours against llama.cpp, float32 against f32 and bfloat16 against f16: the median of the per-round ratios "
        f"(above 1: ours is faster). Decoding is judged on the rounds where llama.cpp f32 decoded at >= "
        f"{FAST_BUS_TOKENS_PER_S} tokens/s (a fast memory bus): {fast} of {rs['reps']} rounds here"
        + ("" if fast else ", so all rounds are used") + ". Decoding rounds' bandwidth: "
        + ", ".join(f"{b:.0f}" for b in results["decode_round_bandwidth_GBps"]) + " GB/s.",
        "",
        "| contender | decode, fast-bus rounds | decode, all rounds | decode per round | batched | prefill |",
        "|---|---|---|---|---|---|",
    ]
    for c in vl["decode"]:
        d = vl["decode"][c]
        fast_cell = f"{d['fast']:.2f}x" if d["fast"] is not None else "—"
        per_round = ", ".join(f"{r:.2f}" for r in d["per_round"])
        lines.append(f"| {c} | {fast_cell} | {d['all']:.2f}x | {per_round} | {vl['batched'][c]['all']:.2f}x | "
                     f"{vl['prefill'][c]['all']:.2f}x |")
    return lines


def chart(results, derived, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"torch": "#ee4c2c", "torch+compile": "#a3301a", "numpy": "#4d77cf", "transformers": "#999999"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    ax = axes[0]
    names = list(results["decode"])
    values = [results["decode"][c]["tokens_per_s_median"] for c in names]
    bars = ax.bar(range(len(names)), values, color=[colors[c.split("-")[0]] for c in names])
    ax.bar_label(bars, fmt="%.1f")
    for dt, style in (("float32", "--"), ("bfloat16", ":")):
        ax.axhline(derived["roofline_tokens_per_s"][dt], color="k", linestyle=style, linewidth=1,
                   label=f"roofline {dt} ({derived['roofline_tokens_per_s'][dt]:.0f})")
    ax.set_xticks(range(len(names)), [n.replace("-", "\n") for n in names], fontsize=8)
    ax.set_ylabel("tokens/s")
    ax.set_title("decoding, batch 1, 128 tokens (higher is better)")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    names = list(results["prefill"])
    values = [results["prefill"][c]["seconds_median"] for c in names]
    bars = ax.bar(range(len(names)), values, color=[colors[c.split("-")[0]] for c in names])
    ax.bar_label(bars, fmt="%.2f s")
    ax.set_xticks(range(len(names)), [n.replace("-", "\n") for n in names], fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("prefill, 1024 tokens (lower is better)")
    ax = axes[2]
    names = list(results["rss"])
    used = [derived["rss_used_bytes"][c] / 2**20 for c in names]
    limit = [derived["rss_limit_bytes"][c] / 2**20 for c in names]
    x = np.arange(len(names))
    bars = ax.bar(x - 0.2, used, 0.4, color=[colors[c.split("-")[0]] for c in names], label="peak RSS while sampling")
    ax.bar_label(bars, fmt="%.0f")
    ax.bar(x + 0.2, limit, 0.4, color="none", edgecolor="k", hatch="//", label="limit: 1.3 x weights + KV cache")
    ax.set_xticks(x, [n.replace("-", "\n") for n in names], fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_ylim(0, 1.3 * max(limit))  # room for the legend above the bars
    ax.set_title("memory while sampling (lower is better)")
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"GPT-2 124M (random weights) on {results['machine']['cpu']}, {results['machine']['cores']} cores, "
                 f"{results['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(section, path):
    """Replace the generated section of BENCHMARKS.md, keeping the hand-written text around it."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{MARK_BEGIN}\n{MARK_END}\n"
    if MARK_BEGIN not in text or MARK_END not in text:
        text = text.rstrip() + f"\n\n{MARK_BEGIN}\n{MARK_END}\n"
    head, rest = text.split(MARK_BEGIN, 1)
    tail = rest.split(MARK_END, 1)[1]
    path.write_text(f"{head}{MARK_BEGIN}\n{section}\n{MARK_END}{tail}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed runs per contender and measurement (default: 5)")
    p.add_argument("--out", type=Path, default=ROOT, help="where BENCHMARKS.md and benchmarks/ results go")
    p.add_argument("--llama-cpp", type=Path, metavar="DIR",
                   help="also time llama.cpp, built in DIR as ../shared/llamacpp-anchor/build.sh builds it "
                        "(llama.cpp/build/bin, llama.cpp/convert_hf_to_gguf.py, venv/)")
    p.add_argument("--from-json", type=Path, metavar="FILE",
                   help="measure nothing: rewrite the tables and the chart from a results.json this report wrote")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--rss", help=argparse.SUPPRESS)
    p.add_argument("--rss-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return bandwidth_worker() if args.worker == "bandwidth" else worker(args.worker)
    if args.rss:
        return peak_rss(args.rss, args.rss_batch)
    if args.reps < 1:
        p.exit(2, f"{p.prog}: error: --reps must be >= 1, got {args.reps}\n")
    if args.llama_cpp and not (args.llama_cpp / "llama.cpp" / "build" / "bin" / "llama-bench").is_file():
        p.exit(2, f"{p.prog}: error: --llama-cpp {args.llama_cpp}: no llama.cpp/build/bin/llama-bench in it\n")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    (args.out / "benchmarks").mkdir(parents=True, exist_ok=True)
    path = args.out / "benchmarks" / "results.json"
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        results.pop("derived", None)
    else:
        results = measure(args.reps, log, args.llama_cpp)
        path.write_text(json.dumps(results, indent=1) + "\n")  # the measurements are safe before any arithmetic
    derived = evaluate(results)
    path.write_text(json.dumps({**results, "derived": derived}, indent=1) + "\n")
    chart(results, derived, args.out / "benchmarks" / "results.png")
    section = markdown(results, derived)
    write_markdown(section, args.out / "BENCHMARKS.md")
    print(section)


if __name__ == "__main__":
    sys.exit(main())
