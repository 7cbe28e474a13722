"""Where a decoding step's time goes: the matrix products against everything between them, per backend.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE uv run python -m benchmarks.step_profile   # ~1.5 min on 2 cores

For each eager backend (NumPy float32, torch float32 and bfloat16) and batch size (1 and 8), two measurements:
- The step of GPT-2 124M (the report's random checkpoint), one token per sequence at context 8..8+steps, with
  a wall-clock timer around every matrix product of the blocks, the lm_head, and the attention over the cache.
  "between" is the rest of the step: LayerNorms, GELU, residual adds, the KV cache writes, Python and dispatch.
  The products' figures include their own call overhead; GB/s is the bytes of their weights (in the backend's
  dtype) over their time.
- The same step on a model of GPT-2 124M's structure (12 layers, 12 heads) whose matrices are tiny (n_embd 96,
  vocab 512): nearly all of its time is what a step costs besides reading the weights. That is the floor a
  faster memory bus cannot lower, and it is measured without the bus's noise.
The sampler (weights.sampling.sample_next, top_k 200, temperature 0.8) is timed on its own: it runs once a
step, on the logits of every row.

Each figure is the median of --rounds rounds, the backends taking turns within a round. The timers cost about
a microsecond each (about 60 a step), and the memory bus of a shared host moves from minute to minute, so read
the parts as shares of the step rather than as exact figures, and compare backends within one run.
"""

import argparse
import contextlib
import functools
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

import weights
from weights import GPTConfig
from weights.sampling import row_generators, sample_next
from benchmarks import common, report

PROMPT_TOKENS = 8
TINY = GPTConfig(block_size=1024, vocab_size=512, n_layer=12, n_head=12, n_embd=96)
PARTS = ("block products", "lm_head", "attention")


@contextlib.contextmanager
def timers(targets, clock):
    """Wrap each (owner, attribute, part) of targets so that its calls add their wall time to clock[part];
    part may be a function of the call's arguments. The originals are back when the block ends."""
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]

    def timed(function, part):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                clock[part(*args) if callable(part) else part] += time.perf_counter() - start
        return wrapper

    try:
        for (owner, name, part), (_, _, function) in zip(targets, originals):
            setattr(owner, name, timed(function, part))
        yield clock
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


class NumpyStep:
    backend = "numpy"
    itemsize = 4  # float32

    def __init__(self, path):
        import gpt2_numpy
        from gpt2_numpy import model

        self.model = gpt2_numpy.GPT.from_pretrained(path)
        self.module = model

    def targets(self):
        m = self.module
        return [(m.Linear, "__call__", "block products"), (m.GPT, "lm_head", "lm_head"),
                (m, "attention", "attention")]

    def prompt(self, batch, steps):
        """A KV cache for batch sequences, holding an 8-token prompt, with room for steps more tokens."""
        self.model.allocate_kv_cache(batch, PROMPT_TOKENS + steps)
        self.model(np.zeros((batch, PROMPT_TOKENS), np.int64), 0)

    def run(self, batch, steps):
        """Seconds per step of steps one-token steps for batch sequences, after the prompt."""
        token = np.zeros((batch, 1), np.int64)
        start = time.perf_counter()
        for position in range(PROMPT_TOKENS, PROMPT_TOKENS + steps):
            self.model(token, position)
        return (time.perf_counter() - start) / steps


class TorchStep:
    def __init__(self, path, dtype="float32"):
        import torch
        import gpt2_torch

        self.torch = torch
        self.model = gpt2_torch.GPT.from_pretrained(path, dtype=dtype)
        self.backend = "torch" if dtype == "float32" else f"torch {dtype}"
        self.itemsize = self.model.lm_head.weight.element_size()

    def targets(self):
        from torch.nn import functional as F
        from gpt2_torch.few_row_products import FewRowLinear

        lm_head = self.model.lm_head

        def part(module, *_):
            return "lm_head" if module is lm_head else "block products"

        # every nn.Linear of a CPU model is a FewRowLinear (GPT.from_pretrained), its fallback nn.Linear's forward
        return [(FewRowLinear, "forward", part), (F, "scaled_dot_product_attention", "attention")]

    def prompt(self, batch, steps):
        torch = self.torch
        with torch.inference_mode():
            self.model.allocate_kv_cache(batch, PROMPT_TOKENS + steps)
            self.model(torch.zeros((batch, PROMPT_TOKENS), dtype=torch.long), 0)

    def run(self, batch, steps):
        torch = self.torch
        with torch.inference_mode():
            token = torch.zeros((batch, 1), dtype=torch.long)
            start = time.perf_counter()
            for position in range(PROMPT_TOKENS, PROMPT_TOKENS + steps):
                self.model(token, position)
            return (time.perf_counter() - start) / steps


BACKENDS = (NumpyStep, TorchStep, functools.partial(TorchStep, dtype="bfloat16"))


def tiny_checkpoint(directory) -> Path:
    """A random model of TINY's shape, written with weights.save."""
    rng = np.random.default_rng(0)
    params = {name: (0.02 * rng.standard_normal(shape)).astype(np.float32)
              for name, shape in weights.parameter_shapes(TINY).items()}
    path = Path(directory) / "tiny.safetensors"
    weights.save(path, TINY, params)
    return path


def sampler_seconds(batch, vocab_size, repeats=50):
    """Seconds per call of the shared sampler on (batch, vocab_size) float32 logits, one stream per row."""
    logits = np.random.default_rng(0).standard_normal((batch, vocab_size)).astype(np.float32)
    rngs = row_generators(0, range(batch))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sample_next(logits, rngs, temperature=0.8, top_k=200)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def weight_bytes(config: GPTConfig, itemsize):
    """Bytes a step reads in each timed product (the report's bytes_per_token): the block matrices, and wte as
    the lm_head."""
    parts = report.bytes_per_token(config, itemsize=itemsize)
    return {"block products": parts["matrices (c_attn, attn.c_proj, c_fc, mlp.c_proj)"],
            "lm_head": parts["wte, read once by the tied lm_head"]}


def profile(path, tiny_path, batches=(1, 8), steps=64, rounds=5):
    """{(backend, batch): {"step", each part, "between", "tiny step"} in seconds per step (medians), "itemsize"
    (bytes per weight)}."""
    real = [backend(path) for backend in BACKENDS]
    tiny = {step.backend: step for step in (backend(tiny_path) for backend in BACKENDS)}
    samples = {}
    for batch in batches:
        for _ in range(rounds):
            for step in real:
                step.prompt(batch, steps)  # not timed: the parts are those of the one-token steps
                with timers(step.targets(), Counter()) as clock:
                    total = step.run(batch, steps)
                row = {"step": total, **{p: clock[p] / steps for p in PARTS}}
                row["between"] = total - sum(row[p] for p in PARTS)
                row["itemsize"] = step.itemsize
                tiny[step.backend].prompt(batch, steps)
                row["tiny step"] = tiny[step.backend].run(batch, steps)
                for key, value in row.items():
                    samples.setdefault((step.backend, batch), {}).setdefault(key, []).append(value)
    return {key: {part: statistics.median(values) for part, values in parts.items()}
            for key, parts in samples.items()}


def table(results, config, sampler):
    lines = ["| backend | batch | step (ms) | block products (ms, GB/s) | lm_head (ms, GB/s) | attention (ms) "
             "| between (ms) | tiny-matrix step (ms) | sampler (ms) |", "|---|---|---|---|---|---|---|---|---|"]
    for (backend, batch), r in results.items():
        nbytes = weight_bytes(config, r["itemsize"])
        ms = {k: 1e3 * r[k] for k in ("step", *PARTS, "between", "tiny step")}
        gbps = {p: nbytes[p] / r[p] / 1e9 for p in nbytes}
        lines.append(f"| {backend} | {batch} | {ms['step']:.1f} | {ms['block products']:.1f} "
                     f"({gbps['block products']:.1f}) | {ms['lm_head']:.1f} ({gbps['lm_head']:.1f}) "
                     f"| {ms['attention']:.2f} | {ms['between']:.2f} | {ms['tiny step']:.2f} "
                     f"| {1e3 * sampler[batch]:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64, help="decoding steps per measurement (default: 64)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the backends alternating (default: 5)")
    args = parser.parse_args(argv)
    path = common.checkpoint()
    config, _ = weights.load(path)
    with tempfile.TemporaryDirectory() as directory:
        results = profile(path, tiny_checkpoint(directory), steps=args.steps, rounds=args.rounds)
    sampler = {batch: sampler_seconds(batch, config.vocab_size) for batch in (1, 8)}
    print(table(results, config, sampler))


if __name__ == "__main__":
    main()
