"""Hostile and broken input (issue 13): each case ends in sensible output with exit 0, or in exactly one line on
stderr, no traceback, and the exit status the commands document (1 the run failed, 2 bad input), within seconds.
No NaN or infinity ever becomes text.

The checkpoint is tiny (1 layer, n_embd 16) but has GPT-2's whole vocabulary, so real prompts tokenize into it.
Cases run in-process (sample.main, compare.main, weights.load) unless they need a real process: stdout closed or
full, a locale's encoding, a FIFO that would hang (a timeout guards those). Subprocesses use the NumPy backend
where they can: it never imports torch, so they start in well under a second.
"""

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import compare
import sample
import weights
from conftest import write_checkpoint
from weights import WeightsError, cli, files, tokenizer

REPO = Path(__file__).resolve().parent.parent
BLOCK_SIZE = 32
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # see test_sample_cli.py
# A case that is refused must be refused at once: far below this, which only keeps a hang from stalling the suite.
HANG = 60
NON_FINITE = "logits are NaN or infinite"

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# --- checkpoints ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A Hugging Face directory written by transformers (1 layer, 2 heads, n_embd 16, vocabulary 50257,
    block_size 32), in a directory whose name is not ASCII: its path is printed by compare.py."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-ü"), 1, 2, 16, 50257, BLOCK_SIZE)


def variant(tiny: Path, directory: Path, tensors=None, config=None) -> Path:
    """A copy of tiny with tensors(dict of its arrays) applied to model.safetensors and config merged into
    config.json."""
    directory = Path(shutil.copytree(tiny, directory))
    if tensors is not None:
        arrays = load_file(str(directory / "model.safetensors"))
        tensors(arrays)
        save_file(arrays, str(directory / "model.safetensors"))
    if config is not None:
        merged = {**json.loads((directory / "config.json").read_text()), **config}
        (directory / "config.json").write_text(json.dumps(merged))
    return directory


def set_entry(name, index, value):
    def change(arrays):
        arrays[name][index] = value

    return change


def scale(name, factor):
    def change(arrays):
        arrays[name] *= factor

    return change


@pytest.fixture(scope="module")
def broken(tiny, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints that load but compute garbage, by name: one NaN weight, one infinite weight, and position
    embeddings of about 4e5, beyond float16's 65504 (and harmless in float32 or bfloat16)."""
    directory = tmp_path_factory.mktemp("broken")
    return {
        "nan": variant(tiny, directory / "nan", set_entry("transformer.h.0.mlp.c_fc.weight", (3, 5), np.nan)),
        "inf": variant(tiny, directory / "inf", set_entry("transformer.h.0.attn.c_proj.weight", (1, 2), np.inf)),
        "large": variant(tiny, directory / "large", scale("transformer.wpe.weight", 1e6)),
    }


# --- running the commands ------------------------------------------------------------------------------------

def in_process(capsys, main, *args) -> tuple[int, str, str]:
    """main(args) in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def in_a_process(script, *args, env=None, stdout=subprocess.PIPE, **options) -> subprocess.CompletedProcess:
    """script (sample.py or compare.py) in a process of its own, bytes out; killed if it runs past HANG."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, stdout=stdout, stderr=subprocess.PIPE,
                          timeout=HANG, env={**os.environ, **ONE_THREAD, **(env or {})}, **options)


def assert_one_line(status, err, expected_status, *fragments):
    """The exit status, and stderr exactly one line (no traceback) holding every fragment."""
    err = err.decode() if isinstance(err, bytes) else err
    assert status == expected_status, err
    assert "Traceback" not in err and err.endswith("\n") and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert str(fragment) in err, err


def assert_load_error(source, *fragments):
    with pytest.raises(WeightsError) as info:
        weights.load(source)
    assert "\n" not in str(info.value)
    for fragment in fragments:
        assert str(fragment) in str(info.value), info.value


def sample_args(checkpoint, *more):
    return ["--init-from", checkpoint, "--max_new_tokens", 4, "--start", "Hello", *more]


# --- no garbage with exit 0: NaN and inf never become text ----------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("weight", ["nan", "inf"])
def test_a_non_finite_weight_is_a_failed_run_not_text(broken, capsys, weight, backend):
    """One NaN (or inf) among the weights: exit 1 and the sampler's one line, no sample, and no NumPy warning
    lines on the way."""
    status, out, err = in_process(capsys, sample.main, *sample_args(broken[weight], "--backend", backend))
    assert_one_line(status, err, 1, NON_FINITE, "NaN or infinite weights")
    assert out == ""


@pytest.mark.parametrize("dtype, status", [("float16", 1), ("bfloat16", 0), ("float32", 0)])
def test_float16_overflow_is_refused_and_the_advice_works(broken, capsys, dtype, status):
    """Weights beyond float16's range: in float16 the logits go non-finite and the error suggests bfloat16 or
    float32; in those the same checkpoint samples."""
    code, out, err = in_process(capsys, sample.main, *sample_args(broken["large"], "--dtype", dtype))
    if status:
        assert_one_line(code, err, 1, NON_FINITE, "float16", "use bfloat16 or float32")
    else:
        assert code == 0 and err == "" and out.startswith("Hello")


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_a_subnormal_temperature_is_greedy_decoding(tiny, capsys, backend):
    """1e-320 and 5e-324 (the smallest float) are finite and positive, so they pass the argument check; dividing
    the logits by them overflows, yet the text is temperature 0's (the argmax has no exact tie here)."""
    texts = [in_process(capsys, sample.main, *sample_args(tiny, "--backend", backend, "--temperature", t))
             for t in (0, "1e-320", "5e-324")]
    assert all(code == 0 and err == "" for code, _, err in texts)
    assert texts[0][1] == texts[1][1] == texts[2][1]


def test_compare_names_the_first_non_finite_layer(broken, tmp_path, capsys):
    """NaN weights in h.0's MLP: the reference itself goes non-finite there, so the verdict says so (rather than
    blaming the backends), the table marks the row, the JSON has it, no greedy tokens are decoded from NaN
    logits, and the plot is still drawn. Exit 1: the comparison fails."""
    report_file, plot_file = tmp_path / "r.json", tmp_path / "r.png"
    status, out, err = in_process(capsys, compare.main, "--init-from", broken["nan"], "--greedy", 3,
                                  "--json", report_file, "--plot", plot_file)
    assert status == 1 and err == ""
    assert out.splitlines()[-1].startswith("FAIL: the reference numpy float64 is not finite from h.0.mlp on")
    [row] = [line for line in out.splitlines() if line.startswith("h.0.mlp ")]
    assert "first non-finite (reference, torch, numpy)" in row
    report = json.loads(report_file.read_text())
    assert report["reference_first_non_finite"] == "h.0.mlp" and report["greedy"] is None
    assert {b["first_non_finite"] for b in report["backends"].values()} == {"h.0.mlp"}
    assert plot_file.read_bytes().startswith(b"\x89PNG")


def test_compare_names_the_backend_that_goes_non_finite(tiny):
    """Only the NumPy float32 model gets a NaN weight (in memory): its column, and no other, is non-finite from
    h.0.mlp on, and its greedy decode yields no tokens instead of an error."""
    subjects, reference = compare.load_subjects(str(tiny), "float32", "cpu", "numpy-float64")
    fc = subjects[1].model.h[0].mlp.c_fc
    fc.weight = fc.weight.copy()  # the loaded array is a read-only memory map
    fc.weight[0, 0] = np.nan
    idx = np.array([tokenizer.encode(compare.DEFAULT_PROMPT)])
    with np.errstate(invalid="ignore"):
        report = compare.compare(subjects, reference, idx, greedy=2)
    columns = {c.subject.name: c for c in report.columns}
    assert report.reference_non_finite is None and columns["torch"].first_non_finite is None
    assert columns["numpy"].first_non_finite == columns["numpy"].first_failure == "h.0.mlp"
    assert columns["numpy"].greedy.non_finite and not columns["numpy"].greedy.ok and columns["torch"].greedy.ok
    assert compare.verdict(report) == "FAIL: numpy float32 first fails at h.0.mlp, where it is no longer finite"
    assert compare.to_json(report)["backends"]["numpy"]["first_non_finite"] == "h.0.mlp"


def test_a_greedy_disagreement_at_the_first_new_token_is_judged(tiny):
    """Found here: when the very first new token differs, the reference's logits are taken after no agreed
    tokens, and an empty list must not turn the context into floats (an IndexError before)."""
    subjects, reference = compare.load_subjects(str(tiny), "float32", "cpu", "numpy-float64")
    idx = np.array([tokenizer.encode("Hello")])
    reference_tokens = compare.greedy_tokens(reference.model, idx, 2)

    class FirstTokenWrong:
        def generate(self, idx, n, temperature=0):
            out = subjects[1].model.generate(idx, n, temperature=temperature)
            out[0, idx.shape[1]] = (reference_tokens[0] + 1) % 50257
            return out

    greedy = compare.greedy_agreement(FirstTokenWrong(), reference.model, idx, reference_tokens, 2e-5, 2e-5)
    assert greedy.first_mismatch == 0 and greedy.margin > 0 and not greedy.ok


# --- the loader: duplicates, config fields, sizes, dtypes ------------------------------------------------------

def test_the_same_parameter_under_two_keys_is_named(tiny, tmp_path, capsys):
    """wte.weight and transformer.wte.weight, different values: no silent choice of whichever comes last."""
    def duplicate(arrays):
        arrays["wte.weight"] = arrays["transformer.wte.weight"] + 1

    directory = variant(tiny, tmp_path / "dup", duplicate)
    status, out, err = in_process(capsys, sample.main, *sample_args(directory, "--backend", "numpy"))
    assert_one_line(status, err, 2, "'transformer.wte.weight' and 'wte.weight' both name wte.weight")


def test_a_tensor_in_two_shards_is_named(tiny, tmp_path):
    arrays = load_file(str(tiny / "model.safetensors"))
    directory = tmp_path / "sharded"
    shutil.copytree(tiny, directory)
    (directory / "model.safetensors").unlink()
    save_file(arrays, str(directory / "model-1.safetensors"))
    save_file({"transformer.ln_f.bias": arrays["transformer.ln_f.bias"] + 1}, str(directory / "model-2.safetensors"))
    weight_map = {**{name: "model-1.safetensors" for name in arrays}, "transformer.ln_f.bias": "model-2.safetensors"}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_load_error(directory, "'transformer.ln_f.bias' is in both model-1.safetensors and model-2.safetensors")


def save_with_config(path, config, params, **changes):
    """params as a safetensors file whose gpt_config metadata is config with changes (any JSON values)."""
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(path),
              metadata={"gpt_config": json.dumps({**vars(config), **changes})})
    return path


@pytest.mark.parametrize("dropout", ["0.1", None, -0.5, 2, True])
def test_a_dropout_of_the_wrong_type_or_range_is_one_line(tiny, tmp_path, capsys, dropout):
    """dropout reaches torch.nn.Dropout: a string or null there was a traceback from deep in torch."""
    config, params = weights.load(tiny)
    path = save_with_config(tmp_path / "m.safetensors", config, params, dropout=dropout)
    status, _, err = in_process(capsys, sample.main, *sample_args(path))
    assert_one_line(status, err, 2, "GPTConfig.dropout must be a number in [0, 1]", repr(dropout))


def test_nanogpt_model_args_are_checked_too(tiny, tmp_path):
    """bias "False" is a true string (bool("False") is True), and dropout null: both refused, not guessed at."""
    config, params = weights.load(tiny)
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=BLOCK_SIZE, vocab_size=50257)
    model = {f"transformer.{name}": torch.from_numpy(np.array(value)) for name, value in params.items()}
    for changes, message in [({"bias": "False"}, "GPTConfig.bias must be true or false, got 'False'"),
                             ({"dropout": None}, "GPTConfig.dropout"), ({"n_layer": 1.0}, "GPTConfig.n_layer")]:
        torch.save({"model": model, "model_args": {**args, **changes}}, tmp_path / "ckpt.pt")
        assert_load_error(tmp_path / "ckpt.pt", "bad nanoGPT model_args", message)


@pytest.mark.parametrize("reference", ["numpy-float64", "transformers"])
def test_n_inner_as_a_float_is_refused_before_transformers_sees_it(tiny, tmp_path, capsys, reference):
    """256.0 == 256, but transformers refuses a float n_inner (with a multi-line error): so do we, first."""
    directory = variant(tiny, tmp_path / "n_inner", config={"n_inner": 64.0})
    status, _, err = in_process(capsys, compare.main, "--init-from", directory, "--reference", reference)
    assert_one_line(status, err, 2, "n_inner=64.0 is not GPT-2's architecture")


def test_an_untied_head_in_the_config_is_refused(tiny, tmp_path):
    """tie_word_embeddings false with no lm_head.weight: transformers would draw a random head for the reference."""
    directory = variant(tiny, tmp_path / "untied", config={"tie_word_embeddings": False})
    assert_load_error(directory, "tie_word_embeddings=False")


@pytest.mark.parametrize("where", ["config.json", "gpt_config"])
def test_a_huge_n_layer_is_compared_with_the_file_first(tiny, tmp_path, where):
    """n_layer 10**12 and a file without (or with fewer) blocks: one error at once, not a table of 10**13
    expected shapes built before any check."""
    if where == "config.json":
        source = variant(tiny, tmp_path / "huge", config={"n_layer": 10**12})
    else:
        config, params = weights.load(tiny)
        embeddings = {k: v for k, v in params.items() if not k.startswith("h.")}
        source = save_with_config(tmp_path / "m.safetensors", config, embeddings, n_layer=10**12)
    assert_load_error(source, f"n_layer={10**12}", "blocks")


def test_float8_tensors_are_named(tiny, tmp_path):
    """A float8 tensor in a torch checkpoint (NumPy cannot hold one: a TypeError from .numpy() before), and one in
    a safetensors file (a valid dtype of the format, not a corrupted header)."""
    _, params = weights.load(tiny)
    state = {f"transformer.{name}": torch.from_numpy(np.array(value)) for name, value in params.items()}
    state["transformer.ln_f.weight"] = state["transformer.ln_f.weight"].to(torch.float8_e4m3fn)
    directory = tmp_path / "f8"
    directory.mkdir()
    shutil.copy(tiny / "config.json", directory)
    torch.save(state, directory / "pytorch_model.bin")
    assert_load_error(directory, "'transformer.ln_f.weight' is torch.float8_e4m3fn", "does not read")
    header = json.dumps({"wte.weight": {"dtype": "F8_E5M2", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (tmp_path / "f8.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(2))
    assert_load_error(tmp_path / "f8.safetensors", "'wte.weight' is F8_E5M2, which this loader does not read")


def test_json_nested_too_deeply_is_bad_input(tiny, tmp_path, capsys):
    """Found here: 100,000 nested brackets make json.loads raise RecursionError, a RuntimeError, which sample.py
    took for torch's (exit 1, no file named). In config.json, a safetensors header and its gpt_config alike."""
    deep = "[" * 100_000 + "]" * 100_000
    directory = variant(tiny, tmp_path / "deep")
    (directory / "config.json").write_text(deep)
    header = json.dumps({"__metadata__": {"gpt_config": deep}}).encode()
    (tmp_path / "meta.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    header = deep.encode()
    (tmp_path / "header.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    cases = [(directory, directory / "config.json", "unreadable JSON"),
             (tmp_path / "meta.safetensors", tmp_path / "meta.safetensors", "bad gpt_config"),
             (tmp_path / "header.safetensors", tmp_path / "header.safetensors", "corrupted safetensors header")]
    for source, named, message in cases:
        status, _, err = in_process(capsys, sample.main, *sample_args(source, "--backend", "numpy"))
        assert_one_line(status, err, 2, named, message, "recursion")


def test_a_safetensors_header_beyond_the_formats_limit(tmp_path):
    """A header length of 150 MB in a (sparse) 200 MB file: refused without reading it."""
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write((150_000_000).to_bytes(8, "little"))
        f.truncate(200_000_000)
    assert_load_error(path, "header length 150000000", "limit")


# --- paths that are not what they seem: FIFOs, devices, loops, permissions ----------------------------------------

@pytest.mark.parametrize("script", ["sample.py", "compare.py"])
def test_a_fifo_as_the_checkpoint_is_refused_without_opening_it(tmp_path, script):
    """open() on a FIFO waits for a writer: the loader stats it first and refuses it."""
    os.mkfifo(tmp_path / "fifo")
    numpy = ["--backend", "numpy"] if script == "sample.py" else []  # no torch import: a quick start
    run = in_a_process(script, "--init-from", tmp_path / "fifo", *numpy)
    assert_one_line(run.returncode, run.stderr, 2, "fifo: a FIFO (named pipe), not a checkpoint file or directory")


@pytest.mark.parametrize("script", ["sample.py", "compare.py"])
def test_a_fifo_as_the_prompt_file_is_refused_without_opening_it(tiny, tmp_path, script):
    os.mkfifo(tmp_path / "fifo")
    run = in_a_process(script, "--init-from", tiny, f"--start=FILE:{tmp_path / 'fifo'}")
    assert_one_line(run.returncode, run.stderr, 2, "is a FIFO (named pipe), not a regular file")


@pytest.mark.parametrize("main", [sample.main, compare.main], ids=["sample", "compare"])
@pytest.mark.parametrize("path, message", [("/dev/zero", "is a character device, not a regular file"),
                                           ("/dev/urandom", "is a character device, not a regular file"),
                                           ("/", "is a directory, not a regular file")])
def test_a_device_or_directory_as_the_prompt_file(tiny, capsys, main, path, message):
    """/dev/zero never ends: it was read until memory ran out."""
    status, out, err = in_process(capsys, main, "--init-from", tiny, f"--start=FILE:{path}")
    assert_one_line(status, err, 2, f"the prompt file {path} {message}")
    assert out == ""


def test_a_prompt_file_over_the_limit(tiny, tmp_path, capsys):
    """A (sparse) file one byte over 8 MiB is refused by its size, before it is read; the limit is in --help."""
    with open(tmp_path / "big.txt", "wb") as f:
        f.truncate(cli.PROMPT_LIMIT + 1)
    status, _, err = in_process(capsys, sample.main, *sample_args(tiny, f"--start=FILE:{tmp_path / 'big.txt'}"))
    assert_one_line(status, err, 2, "big.txt is 8 MiB, more than the limit of 8 MiB")
    assert "at most 8 MiB" in " ".join(in_process(capsys, sample.main, "--help")[1].split())


def test_read_regular_file_takes_the_limit_exactly(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    assert files.read_regular_file(tmp_path / "f", 10, "the file") == b"x" * 10
    with pytest.raises(ValueError, match="is 9.54e-06 MiB, more than the limit"):
        files.read_regular_file(tmp_path / "f", 9, "the file")


def test_a_long_prompt_is_cropped_from_a_tail_not_tokenised_whole(tiny, tmp_path, capsys, monkeypatch):
    """A 2 MiB prompt keeps the last block_size tokens that tokenising all of it gives, but only a few hundred
    characters of it are tokenised (a 50 MB prompt took 730 MB before, for 1024 tokens)."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat,", "and", "ünïcödé", "12", "\n", "<|endoftext|>"]
    text = " ".join(rng.choice(words, size=400_000))
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    expected = tokenizer.encode(text)[-BLOCK_SIZE:]
    lengths = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text: lengths.append(len(text)) or encode(text))
    status, out, err = in_process(capsys, sample.main, *sample_args(tiny, "--backend", "numpy", "--temperature", 0,
                                                                     f"--start=FILE:{tmp_path / 'long.txt'}"))
    assert status == 0 and "keeping the last 32 (block_size)" in err and len(err.splitlines()) == 1
    assert out.startswith(tokenizer.decode(expected))
    assert max(lengths) <= 8 * BLOCK_SIZE  # the first tail was enough


@pytest.mark.parametrize("main", [sample.main, compare.main], ids=["sample", "compare"])
@pytest.mark.parametrize("how", ["symlink loop", "through a file", "a device"])
def test_checkpoint_paths_that_cannot_be_read(tiny, tmp_path, capsys, main, how):
    path = {"symlink loop": tmp_path / "loop", "through a file": tiny / "config.json" / "x", "a device": "/dev/null"}
    message = {"symlink loop": "Too many levels of symbolic links", "through a file": "Not a directory",
               "a device": "a character device, not a checkpoint"}
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    status, _, err = in_process(capsys, main, "--init-from", path[how])
    assert_one_line(status, err, 2, str(path[how]), message[how])


@pytest.fixture
def open_tmp():
    """A temporary directory everyone may enter (pytest's own are root's alone when root runs the suite), so that
    under unprivileged() the permission bits of what is in it decide, not those of a directory above."""
    directory = Path(tempfile.mkdtemp())
    directory.chmod(0o755)
    yield directory
    for path in (directory, *directory.rglob("*")):  # so that a non-root user can remove what it made unreadable
        path.chmod(0o700)
    shutil.rmtree(directory)


@contextlib.contextmanager
def unprivileged():
    """The block runs as a user whom permission bits bind. Root, which reads and writes whatever they say (and
    runs CI here), takes nobody's effective ids for the block and its own back after it; the modules the block
    needs are imported already. A user other than root needs no change."""
    if os.geteuid() != 0:
        yield
        return
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("run as root, and there is no user nobody to run this case as")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def readable_copy(tiny, directory) -> Path:
    copy = Path(shutil.copytree(tiny, directory))
    for path in (copy, *copy.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


@pytest.mark.parametrize("what, message", [("directory", "config.json: Permission denied"),
                                           ("config.json", "config.json: Permission denied"),
                                           ("model.safetensors", "model.safetensors: cannot read the file "
                                                                 "(Permission denied)")])
def test_a_checkpoint_the_user_may_not_read(tiny, open_tmp, capsys, what, message):
    directory = readable_copy(tiny, open_tmp / "private")
    (directory if what == "directory" else directory / what).chmod(0)
    for main in (sample.main, compare.main):
        with unprivileged():
            status, _, err = in_process(capsys, main, "--init-from", directory)
        assert_one_line(status, err, 2, message)


def test_a_prompt_file_the_user_may_not_read(tiny, open_tmp, capsys):
    directory = readable_copy(tiny, open_tmp / "model")
    (open_tmp / "p.txt").write_text("hi")
    (open_tmp / "p.txt").chmod(0)
    with unprivileged():
        status, _, err = in_process(capsys, sample.main, *sample_args(directory, f"--start=FILE:{open_tmp / 'p.txt'}"))
    assert_one_line(status, err, 2, f"cannot read the prompt file {open_tmp / 'p.txt'}: Permission denied")


# --- output: stdout closed or full, any locale, report paths -----------------------------------------------------

@pytest.mark.parametrize("script", ["sample.py", "compare.py"])
def test_a_closed_stdout_is_one_line(tiny, script):
    run = in_a_process(script, "--init-from", tiny, preexec_fn=lambda: os.close(1))  # `>&-`
    assert_one_line(run.returncode, run.stderr, 2, "standard output is closed")


@pytest.mark.parametrize("script, args", [("sample.py", ["--backend", "numpy", "--max_new_tokens", 4]),
                                          ("compare.py", [])])
def test_a_full_disk_is_one_line(tiny, script, args):
    """stdout is /dev/full: every write fails with ENOSPC; one line, exit 2, and nothing at the interpreter's exit."""
    with open("/dev/full", "w") as full:
        run = in_a_process(script, "--init-from", tiny, *args, stdout=full)
    assert_one_line(run.returncode, run.stderr, 2, "cannot write to standard output: No space left on device")


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_samples_are_utf8_whatever_the_locale(tiny, backend):
    """An ASCII locale and PYTHONIOENCODING=ascii, a non-ASCII prompt: the sample is written as UTF-8."""
    prompt = "Dear Zoë, ünïcödé 🙂"
    ascii_env = {"PYTHONIOENCODING": "ascii", "LC_ALL": "C", "LANG": "C"}
    run = in_a_process("sample.py", *sample_args(tiny, "--backend", backend, "--start", prompt), env=ascii_env)
    assert run.returncode == 0 and run.stderr == b""
    assert run.stdout.decode("utf-8").startswith(prompt)


def test_the_compare_report_is_utf8_whatever_the_locale(tiny):
    """The report names the checkpoint, whose directory is tiny-ü..."""
    run = in_a_process("compare.py", "--init-from", tiny, env={"PYTHONIOENCODING": "ascii", "LC_ALL": "C"})
    assert run.returncode == 0 and run.stderr == b""
    assert f"checkpoint: {tiny}" in run.stdout.decode("utf-8")


@pytest.mark.parametrize("option", ["--json", "--plot"])
@pytest.mark.parametrize("how", ["symlink loop", "a directory", "through a file", "no directory"])
def test_report_paths_that_cannot_be_written_are_usage_errors(tiny, tmp_path, capsys, option, how):
    """Checked before the comparison runs: exit 2 (a symlink loop gave a traceback and exit 1 before)."""
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    path = {"symlink loop": tmp_path / "loop", "a directory": tmp_path, "through a file": tiny / "config.json" / "r",
            "no directory": tmp_path / "absent" / "r"}[how]
    message = {"symlink loop": "Too many levels of symbolic links", "a directory": "is a directory",
               "through a file": "Not a directory", "no directory": "no such directory"}[how]
    status, out, err = in_process(capsys, compare.main, "--init-from", tiny, option, path)
    assert_one_line(status, err, 2, f"{option} {path}: {message}")
    assert out == ""


def test_a_report_file_on_a_full_disk(tiny, capsys):
    """/dev/full passes the early check (it may be written), then the write fails: exit 2, one line, after the table."""
    status, out, err = in_process(capsys, compare.main, "--init-from", tiny, "--json", "/dev/full")
    assert_one_line(status, err, 2, "cannot write /dev/full: No space left on device")
    assert out.splitlines()[-1].startswith("PASS")


def test_a_report_directory_the_user_may_not_write(tiny, open_tmp, capsys):
    """Refused before the comparison (the check uses the effective ids, which the write will be made with)."""
    directory = readable_copy(tiny, open_tmp / "model")
    (open_tmp / "ro").mkdir(mode=0o555)
    with unprivileged():
        status, out, err = in_process(capsys, compare.main, "--init-from", directory, "--json", open_tmp / "ro" / "r")
    assert_one_line(status, err, 2, f"--json {open_tmp / 'ro' / 'r'}: permission denied")
    assert out == ""


# --- the transformers reference -----------------------------------------------------------------------------------

def test_the_transformers_reference_is_float64_whatever_the_config_says(tiny, tmp_path, capsys):
    """config.json says "dtype": "bfloat16", as transformers writes for a model saved in bfloat16 (the weights
    here are float32). transformers 5 honours it when loading: the reference was rounded to bfloat16 and every
    column failed at embed. Now it agrees with the NumPy float64 column to float64 rounding."""
    directory = variant(tiny, tmp_path / "bf16", config={"dtype": "bfloat16", "torch_dtype": "bfloat16"})
    status, out, err = in_process(capsys, compare.main, "--init-from", directory, "--reference", "transformers",
                                  "--json", tmp_path / "r.json")
    assert status == 0 and err == "", out
    layers = json.loads((tmp_path / "r.json").read_text())["layers"]
    # float64 against float64: 1e-12 is the float64 tolerance (compare.TOLERANCES); bfloat16 rounding is 4e-3.
    assert all(row["max_rel_diff"] < 1e-12 for row in layers if row["backend"] == "numpy-float64")


def test_an_error_of_transformers_is_one_line(tiny, capsys, monkeypatch):
    """What transformers refuses that our loader accepted (its validation errors run to several lines)."""
    import transformers

    def refuses(*args, **kwargs):
        raise TypeError("Validation error for field 'n_inner':\n  TypeError: Field 'n_inner' expected int\nmore")

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", refuses)
    status, out, err = in_process(capsys, compare.main, "--init-from", tiny, "--reference", "transformers")
    assert_one_line(status, err, 2, f"transformers cannot build the reference from {tiny}: Validation error for "
                                    "field 'n_inner':")
    assert out == ""
