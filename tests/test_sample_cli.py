"""sample.py end to end: output format, backend-identical sampling, greedy decoding, prompts, bad input.

Checks that need a real process (exit codes, the exact stderr, a terminal) run sample.py in subprocesses,
started together so that their interpreter start-ups overlap; the others call sample.main in-process,
which is the same code path minus the interpreter start-up. All on the random checkpoints of conftest.py:
"small" has GPT-2's full vocabulary (real prompts tokenize into it), "odd" a block_size of 48.
"""

import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
import weights
from weights import tokenizer

REPO = Path(__file__).resolve().parent.parent
SEPARATOR = "---------------"
# One BLAS / OpenMP thread: the tiny models run as fast, and do not slow down 10-50x when other processes
# keep the cores busy (threads spin-waiting for each other). Threads never change which tokens are drawn.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def start_cli(*args, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "sample.py", *map(str, args)], cwd=REPO, env={**os.environ, **ONE_THREAD},
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def run_all(commands: dict) -> dict:
    """Run sample.py with each argument list at once; name -> (exit code, stdout, stderr)."""
    processes = {name: start_cli(*args) for name, args in commands.items()}
    results = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=120)
        results[name] = (process.returncode, out, err)
    return results


def run_on_terminal(*args) -> tuple[int, str, str]:
    """sample.py with its stdout on a pseudo-terminal: (exit code, what the terminal received, stderr). The
    terminal turns each \\n into \\r\\n (its ONLCR setting); that is undone."""
    leader, follower = pty.openpty()
    process = start_cli(*args, stdout=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed its end of the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    _, err = process.communicate(timeout=120)
    return process.returncode, b"".join(chunks).decode("utf-8").replace("\r\n", "\n"), err


def run_main(capsys, *args) -> str:
    """sample.main in this process; its stdout (stderr must stay empty unless asked with run_main_err)."""
    out, err = run_main_err(capsys, *args)
    assert err == ""
    return out


def run_main_err(capsys, *args) -> tuple[str, str]:
    capsys.readouterr()
    sample.main([str(a) for a in args])
    return tuple(capsys.readouterr())


def split_samples(stdout: str) -> list[str]:
    """The samples of nanoGPT's output format: each sample, then a line of 15 dashes."""
    assert stdout.endswith("\n" + SEPARATOR + "\n"), stdout[-200:]
    return stdout.split("\n" + SEPARATOR + "\n")[:-1]


def hf_greedy_text(checkpoint, ids, n) -> str:
    """transformers' greedy continuation of ids by n tokens, decoded; eos_token_id=None so it cannot stop early."""
    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = checkpoint.hf_model().generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                             do_sample=False, eos_token_id=None, pad_token_id=None)
    assert out.shape == (1, len(ids) + n)
    return tokenizer.decode(out[0].tolist())


# --- end to end in subprocesses ------------------------------------------------------------------------

def test_end_to_end_format_and_backends(small_checkpoint):
    """nanoGPT's format from a real process: each sample, then the separator line; --num_samples 2 prints 2.
    Both backends at once, same seed: the same text."""
    args = ["--init-from", small_checkpoint.path, "--start", "Hello, my name is", "--num_samples", 2,
            "--max_new_tokens", 30, "--seed", 5]
    results = run_all({backend: [*args, "--backend", backend] for backend in ("torch", "numpy")})
    for backend, (code, out, err) in results.items():
        assert code == 0 and err == "", (backend, err)
        samples = split_samples(out)
        assert len(samples) == 2 and all(s.startswith("Hello, my name is") for s in samples)
        assert out.count(SEPARATOR) == 2
        assert samples[0] != samples[1]  # a random stream per sample: they continue differently
    assert results["torch"][1] == results["numpy"][1]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Inputs that sample.py must refuse: broken checkpoints, a prompt file that is not text, and a valid
    checkpoint whose 100-token vocabulary cannot hold GPT-2's token ids."""
    directory = tmp_path_factory.mktemp("bad")
    (directory / "model.safetensors").write_bytes(b"\x17" * 64 + b"not a safetensors file")
    (directory / "ckpt.pt").write_bytes(os.urandom(256))
    (directory / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    config = weights.GPTConfig(block_size=16, vocab_size=100, n_layer=1, n_head=2, n_embd=8)
    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in weights.parameter_shapes(config).items()}
    weights.save(directory / "tiny_vocab.safetensors", config, params)
    return directory


def bad_inputs(small, bad) -> dict:
    """name -> the arguments of one bad invocation, and a fragment its one-line error must contain."""
    ckpt = ["--init-from", small.path, "--max_new_tokens", 2]
    cases = {
        "negative num_samples": ([*ckpt, "--num_samples", -1], "--num_samples"),
        "zero batch_size": ([*ckpt, "--batch_size", 0], "--batch_size"),
        "non-numeric max_new_tokens": ([*ckpt, "--max_new_tokens", "abc"], "'abc' is not an integer"),
        "negative temperature": ([*ckpt, "--temperature", -0.5], "--temperature"),
        "negative top_k": ([*ckpt, "--top_k", -1], "--top_k"),
        "zero top_p": ([*ckpt, "--top_p", 0], "--top_p"),
        "top_p above 1": ([*ckpt, "--top_p", 1.5], "--top_p"),
        "non-numeric seed": ([*ckpt, "--seed", "x"], "--seed"),
        "missing prompt file": ([*ckpt, "--start=FILE:/no/such/prompt.txt"], "/no/such/prompt.txt"),
        "prompt file not UTF-8": ([*ckpt, f"--start=FILE:{bad / 'latin1.txt'}"], "not UTF-8"),
        "garbage safetensors": (["--init-from", bad / "model.safetensors", "--backend", "numpy"], "model.safetensors"),
        "garbage torch pickle": (["--init-from", bad / "ckpt.pt"], "ckpt.pt"),
        "prompt outside the vocabulary": (["--init-from", bad / "tiny_vocab.safetensors", "--backend", "numpy",
                                           "--start", "Hello"], "vocabulary has 100 tokens"),
        "missing checkpoint": (["--init-from", "/no/such/model.safetensors"], "/no/such/model.safetensors"),
        "numpy on cuda": ([*ckpt, "--backend", "numpy", "--device", "cuda"], "--device cuda"),
        "numpy in bfloat16": ([*ckpt, "--backend", "numpy", "--dtype", "bfloat16"], "bfloat16"),
        "numpy compiled": ([*ckpt, "--backend", "numpy", "--compile"], "--compile"),
    }
    if not torch.cuda.is_available():
        cases["absent cuda"] = ([*ckpt, "--device", "cuda"], "CUDA is not available")
    return cases


def test_bad_input_is_one_line_on_stderr_and_a_nonzero_exit(small_checkpoint, bad_files):
    """Every bad invocation from a real process: exit status 2 (bad input), exactly one line on stderr that says
    what is wrong, no traceback, and nothing on stdout."""
    cases = bad_inputs(small_checkpoint, bad_files)
    results = run_all({name: args for name, (args, _) in cases.items()})
    for name, (code, out, err) in results.items():
        assert code == 2, name
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.endswith("\n"), (name, err)
        assert cases[name][1] in err, (name, err)
        assert out == "", name


def test_streaming_to_a_terminal_prints_the_same_text(small_checkpoint, capsys):
    """On a TTY the tokens are written as they come; the text must be the same as when piped."""
    args = ["--init-from", small_checkpoint.path, "--backend", "numpy", "--start", "Once upon a time",
            "--num_samples", 2, "--max_new_tokens", 40]
    code, on_terminal, err = run_on_terminal(*args)
    assert code == 0 and err == "", err
    assert on_terminal == run_main(capsys, *args)


def test_a_closed_pipe_stops_quietly(small_checkpoint):
    """`sample.py | head`: when the reader goes away, stop without a BrokenPipeError traceback."""
    process = start_cli("--init-from", small_checkpoint.path, "--backend", "numpy", "--num_samples", 200,
                        "--max_new_tokens", 50)
    assert process.stdout.read(10)
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) != 0 and err == ""


def test_a_torch_runtime_error_is_one_line_after_the_samples_already_printed(small_checkpoint, capsys, monkeypatch):
    """A RuntimeError from torch (here CUDA's out-of-memory, a subclass, raised while drawing the second batch of
    one sample) ends sample.py with the message's first line, not a traceback; the first sample stays printed."""
    import gpt2_torch

    generate_tokens = gpt2_torch.GPT.generate_tokens
    calls = []

    def out_of_memory_on_the_second_sample(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nadvice on a second line")
        yield from generate_tokens(self, *args, **kwargs)

    monkeypatch.setattr(gpt2_torch.GPT, "generate_tokens", out_of_memory_on_the_second_sample)
    args = ["--init-from", small_checkpoint.path, "--num_samples", 3, "--batch_size", 1, "--max_new_tokens", 5,
            "--start", "Hi"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(capsys, *args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1  # the run failed
    assert err == "sample.py: error: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    [first] = split_samples(out)
    assert first.startswith("Hi") and len(first) > 2


def test_a_runtime_error_while_loading_is_one_line(small_checkpoint, capsys, monkeypatch):
    import gpt2_torch

    def fails(*args, **kwargs):
        raise RuntimeError("\nInvalidCxxCompiler: No working C++ compiler found\n(the rest of the page)")

    monkeypatch.setattr(gpt2_torch.GPT, "from_pretrained", fails)
    with pytest.raises(SystemExit) as exit_info:
        run_main(capsys, "--init-from", small_checkpoint.path)
    assert exit_info.value.code == 1
    assert capsys.readouterr() == ("", "sample.py: error: InvalidCxxCompiler: No working C++ compiler found\n")


# --- the same text from both backends ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["small", "odd"])
def test_same_seed_gives_the_same_text_from_both_backends(name, request, capsys):
    """float32, nanoGPT's defaults (temperature 0.8, top_k 200), 3 seeds, 2 samples of 60 tokens each; on "odd"
    (block_size 48) the crop path runs. The backends' float32 logits differ by ~1e-5, so a draw can still flip
    where two candidates straddle a decision within that (measured: 4 flips in about 79,000 sampled tokens,
    about one in 20,000, on these checkpoints; see the README's caveat); these seeds have none, and float64
    identity is in test_numpy_model.
    Different seeds must give different text."""
    checkpoint = request.getfixturevalue(f"{name}_checkpoint")
    texts = {}
    for seed in (1337, 1, 2):
        args = ["--init-from", checkpoint.path, "--num_samples", 2, "--max_new_tokens", 60, "--seed", seed]
        texts[seed] = run_main(capsys, *args, "--backend", "torch")
        assert len(split_samples(texts[seed])) == 2
        assert run_main(capsys, *args, "--backend", "numpy") == texts[seed], f"seed {seed}"
    assert len(set(texts.values())) == 3


def test_top_p_is_the_same_on_both_backends(small_checkpoint, capsys):
    args = ["--init-from", small_checkpoint.path, "--start", "The", "--max_new_tokens", 60, "--top_p", 0.9]
    text = run_main(capsys, *args, "--backend", "torch")
    assert run_main(capsys, *args, "--backend", "numpy") == text
    assert text != run_main(capsys, *args[:-2], "--backend", "torch")  # the nucleus cut does change the draws


def test_top_k_zero_and_above_the_vocabulary_both_keep_every_token(small_checkpoint, capsys):
    """--top_k 0 disables the cut and --top_k 100000 (> 50257) keeps all: the same draws, the same text."""
    args = ["--init-from", small_checkpoint.path, "--max_new_tokens", 30, "--backend", "numpy"]
    everything = run_main(capsys, *args, "--top_k", 0)
    assert run_main(capsys, *args, "--top_k", 100000) == everything
    assert len(split_samples(everything)) == 1


def test_compile_prints_the_same_text(small_checkpoint, capsys, tmp_path, monkeypatch):
    """--compile (torch.compile, Inductor generating C++ for the CPU) decodes the same greedy tokens. The
    compiled kernels fuse and reorder float32 operations, so logits move by rounding (measured: 3e-6 on logits
    of magnitude 7); greedy tokens flip only where the two best logits are that close, which these 5 tokens
    are not, so the text must be identical. torch's compile counters show that a graph really was compiled,
    so an ignored --compile cannot pass. About 20 s, nearly all of it Inductor compiling."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # compile from scratch, as on a fresh machine
    args = ["--init-from", small_checkpoint.path, "--start", "Hello, my name is", "--temperature", 0,
            "--max_new_tokens", 5]
    eager = run_main(capsys, *args)
    counters.clear()
    compiled, _ = run_main_err(capsys, *args, "--compile")  # stderr may hold Inductor's warnings
    assert counters["stats"]["unique_graphs"] >= 1
    assert compiled == eager
    torch._dynamo.reset()  # later tests get no compiled code


# --- greedy decoding and prompts -------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_temperature_zero_is_transformers_greedy_search(small_checkpoint, backend, capsys):
    prompt = "Hello, my name is"
    out = run_main(capsys, "--init-from", small_checkpoint.path, "--backend", backend, "--start", prompt,
                   "--temperature", 0, "--max_new_tokens", 20)
    assert split_samples(out) == [hf_greedy_text(small_checkpoint, tokenizer.encode(prompt), 20)]


def test_end_of_text_in_a_prompt_is_one_token_and_an_empty_prompt_starts_from_it(small_checkpoint, capsys):
    """Greedy continuations against transformers from the ids the prompt must become: "Hello<|endoftext|>World"
    is [Hello, 50256, World] (spelled out as text it would be 7 tokens and continue differently), and both ""
    and "<|endoftext|>" are [50256]."""
    greedy = ["--init-from", small_checkpoint.path, "--backend", "numpy", "--temperature", 0, "--max_new_tokens", 12]
    out = run_main(capsys, *greedy, "--start", "Hello<|endoftext|>World")
    assert split_samples(out) == [hf_greedy_text(small_checkpoint, [15496, 50256, 10603], 12)]
    from_end_of_text = hf_greedy_text(small_checkpoint, [tokenizer.END_OF_TEXT_ID], 12)
    assert from_end_of_text.startswith("<|endoftext|>")
    assert split_samples(run_main(capsys, *greedy, "--start", "")) == [from_end_of_text]
    assert split_samples(run_main(capsys, *greedy, "--start", "<|endoftext|>")) == [from_end_of_text]


def test_prompt_from_a_file(small_checkpoint, tmp_path, capsys):
    prompt = "Dear diary,\n\nToday I learned that ünïcödé and <|endoftext|> survive a file."
    (tmp_path / "prompt.txt").write_text(prompt, encoding="utf-8")
    args = ["--init-from", small_checkpoint.path, "--backend", "numpy", "--max_new_tokens", 10]
    from_file = run_main(capsys, *args, f"--start=FILE:{tmp_path / 'prompt.txt'}")
    assert from_file.startswith(prompt)
    assert from_file == run_main(capsys, *args, "--start", prompt)


def test_a_prompt_longer_than_block_size_is_cropped(odd_checkpoint, capsys):
    """"odd" has block_size 48: a 100-token prompt keeps its last 48 tokens, says so on stderr, and continues
    them greedily as transformers does from those 48 (nanoGPT's loop: crop to block_size, full forward)."""
    ids = tokenizer.encode(" one two three four five" * 20)  # 100 tokens
    assert len(ids) == 100
    out, err = run_main_err(capsys, "--init-from", odd_checkpoint.path, "--backend", "numpy", "--temperature", 0,
                            "--max_new_tokens", 8, "--start", tokenizer.decode(ids))
    assert "keeping the last 48" in err and len(err.splitlines()) == 1
    kept = ids[-48:]
    model = odd_checkpoint.hf_model()
    with torch.no_grad():
        for _ in range(8):
            logits = model(torch.tensor([kept[-48:]])).logits  # (1, <= 48, V)
            kept.append(int(logits[0, -1].argmax()))
    assert split_samples(out) == [tokenizer.decode(kept)]


def test_love_letter_prompt(small_checkpoint, capsys, monkeypatch):
    """The README's example prompt exists and samples (relative path, from the repository root)."""
    assert (REPO / "prompts/love_letter.txt").is_file()
    monkeypatch.chdir(REPO)
    out = run_main(capsys, "--init-from", small_checkpoint.path, "--backend", "numpy",
                   "--start=FILE:prompts/love_letter.txt", "--max_new_tokens", 20)
    letter = (REPO / "prompts/love_letter.txt").read_text(encoding="utf-8")
    [text] = split_samples(out)
    assert text.startswith(letter) and len(text) > len(letter)


def test_any_non_negative_seed_samples(small_checkpoint, capsys):
    """The seed only seeds NumPy's generator, which takes integers of any size: 2**70 is as good as 1337."""
    args = ["--init-from", small_checkpoint.path, "--max_new_tokens", 5, "--seed", 2**70]
    assert len(split_samples(run_main(capsys, *args))) == 1


# --- argument parsing in-process -----------------------------------------------------------------------

def test_defaults_are_nanogpts():
    args = sample.parse_args([])
    assert (args.start, args.num_samples, args.max_new_tokens, args.temperature, args.top_k, args.seed, args.device) == (
        "\n", 1, 100, 0.8, 200, 1337, "cpu")
    assert (args.init_from, args.backend, args.dtype, args.compile, args.top_p) == ("gpt2", "torch", "float32", False, None)


@pytest.mark.parametrize("argv", [["--num_samples", "0"], ["--num_samples", "1.5"], ["--max_new_tokens", "-3"],
                                  ["--temperature", "nan"], ["--temperature", "inf"], ["--temperature", "-inf"],
                                  ["--temperature", "x"], ["--top_p", "-0.1"], ["--top_p", "nan"],
                                  ["--top_k", "2.5"], ["--seed", "-1"], ["--backend", "jax"], ["--dtype", "int8"]])
def test_more_bad_numbers_and_choices_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and argv[0] in err


def test_an_infinite_temperature_is_refused(capsys):
    """inf would flatten every distribution to uniform (and nan breaks it): the temperature must be finite."""
    with pytest.raises(SystemExit) as exit_info:
        sample.parse_args(["--temperature", "inf"])
    assert exit_info.value.code == 2
    assert "--temperature: inf is out of range: must be a finite number >= 0.0" in capsys.readouterr().err
