"""llama.cpp as an optional contender of the benchmark report (`python -m benchmarks.report --llama-cpp DIR`).

DIR is a llama.cpp build as ../shared/llamacpp-anchor/build.sh leaves it: llama.cpp/build/bin/ (llama-bench,
llama-batched-bench), llama.cpp/convert_hf_to_gguf.py, and venv/ (a Python that can run the converter). The
report's own random checkpoint is converted to GGUF in f32 and f16, so llama.cpp multiplies the same weights,
and each of its runs is one call of llama-bench or llama-batched-bench, timed by llama.cpp itself:
- decode: `llama-bench -pg 8,128`: an 8-token prompt, then 128 tokens, one at a time (as the report's decode;
  llama-bench draws no samples, it feeds the argmax-free next token: the sampler's cost, ~1% of ours, is left
  out); tokens/s = 128 / the time of the whole test.
- prefill: `llama-bench -p 1024 -n 0`: one batch of 1024 tokens.
- batched: `llama-batched-bench -npp 8 -ntg 128 -npl 8`: 8 sequences of an 8-token prompt and 128 new tokens;
  tokens/s = 8 x 128 / the time of the whole test, prompts included.
"""

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

from weights import tokenizer

THREADS = os.cpu_count() or 1
DTYPES = {"float32": "f32", "float16": "f16"}  # the report's name -> llama.cpp's outtype


def byte_level_vocabulary():
    """GPT-2's vocab.json and merges.txt, rebuilt from the tiktoken rank file this project ships: the same ids.

    Byte-level BPE maps each byte to a printable character (GPT-2's bytes_to_unicode table). A token of rank
    r >= 256 is the merge of the two parts that BPE with the ranks below r leaves of its bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    char = {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
    ranks = {}
    for line in tokenizer.BPE_FILE.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)

    def spell(token: bytes) -> str:
        return "".join(char[b] for b in token)

    def last_merge(token: bytes, below: int) -> tuple[bytes, bytes]:
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, below), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank >= below:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts[0], parts[1]

    vocab = {spell(token): rank for token, rank in ranks.items()}
    vocab["<|endoftext|>"] = len(ranks)
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    merges = [" ".join(map(spell, last_merge(token, rank))) for token, rank in by_rank if rank >= 256]
    return vocab, merges


def convert(llama_dir: Path, checkpoint: Path, out_dir: Path) -> dict[str, Path]:
    """GGUFs of checkpoint (a Hugging Face GPT-2 directory) in f32 and f16, written once into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {dtype: out_dir / f"{checkpoint.name}-{outtype}.gguf" for dtype, outtype in DTYPES.items()}
    if all(p.is_file() for p in paths.values()):
        return paths
    staging = out_dir / "hf"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    (staging / "model.safetensors").symlink_to((checkpoint / "model.safetensors").resolve())
    config = json.loads((checkpoint / "config.json").read_text())
    config.setdefault("n_ctx", config["n_positions"])  # the converter reads n_ctx, which transformers 5 omits
    (staging / "config.json").write_text(json.dumps(config))
    vocab, merges = byte_level_vocabulary()
    (staging / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (staging / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    for dtype, path in paths.items():
        partial = path.with_suffix(".partial")
        converter = llama_dir / "llama.cpp" / "convert_hf_to_gguf.py"
        subprocess.run([str(llama_dir / "venv" / "bin" / "python"), str(converter),
                        str(staging), "--outtype", DTYPES[dtype], "--outfile", str(partial)],
                       check=True, capture_output=True, timeout=600)
        partial.rename(path)
    return paths


class LlamaCppWorker:
    """A contender of the report's alternation (the interface of report.Worker): each command one llama.cpp run."""

    def __init__(self, llama_dir: Path, gguf: Path, dtype: str, prompt_tokens, new_tokens, prefill_tokens, batch):
        self.contender = f"llama.cpp-{dtype}"
        self.bin = llama_dir / "llama.cpp" / "build" / "bin"
        self.gguf, self.prompt_tokens, self.new_tokens = gguf, prompt_tokens, new_tokens
        self.prefill_tokens, self.batch = prefill_tokens, batch
        self.info = {"gguf": str(gguf), "threads": THREADS,
                     "build": self.bench("-p", "1", "-n", "0")[0].get("build_commit")}

    def bench(self, *args):
        out = subprocess.run([str(self.bin / "llama-bench"), "-m", str(self.gguf), "-t", str(THREADS), "-r", "1",
                              "-o", "json", *args], capture_output=True, text=True, timeout=600, check=True)
        return json.loads(out.stdout)

    def ask(self, op, **_):
        if op == "decode":
            [run] = self.bench("-p", "0", "-n", "0", "-pg", f"{self.prompt_tokens},{self.new_tokens}")
            return {"seconds": run["avg_ns"] / 1e9, "tokens": self.new_tokens}
        if op == "prefill":
            [run] = self.bench("-p", str(self.prefill_tokens), "-n", "0")
            return {"seconds": run["avg_ns"] / 1e9, "tokens": self.prefill_tokens}
        if op == "batched":
            out = subprocess.run([str(self.bin / "llama-batched-bench"), "-m", str(self.gguf), "-t", str(THREADS),
                                  "-c", str(self.batch * (self.prompt_tokens + self.new_tokens) + 64),
                                  "-npp", str(self.prompt_tokens), "-ntg", str(self.new_tokens),
                                  "-npl", str(self.batch),
                                  "--output-format", "jsonl"], capture_output=True, text=True, timeout=600, check=True)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            return {"seconds": run["t"], "tokens": self.batch * self.new_tokens}
        raise ValueError(f"unknown op {op}")

    def close(self):
        pass
