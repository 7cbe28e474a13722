"""compare.py: the agreement report on random checkpoints, fault localisation, --greedy, --json, --plot, bad input.

Tolerances: the report's own defaults (compare.TOLERANCES, chosen from measurements in its docstring) are
what these tests check against; the perturbations are 7x (erf GELU) to 50x (a weight scaled by 1 + 1e-3)
above the float32 tolerance on these checkpoints, so a failure to flag them is a real miss.
"""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import compare
from compare import Subject

REPO = Path(__file__).resolve().parent.parent
REFERENCE_NAMES = {"numpy-float64": "numpy-float64", "torch": "torch-float64", "transformers": "transformers-float64"}
# The numpy-float64 column: the NumPy backend in float64 against transformers, when --dtype is not float64 already.
THIRD_COLUMN = "numpy-float64"


def trace_names(n_layer):
    """The activations every report must list, in order (written out here, not taken from compare.py)."""
    names = ["embed"]
    for i in range(n_layer):
        names += [f"h.{i}.ln_1", f"h.{i}.attn", f"h.{i}.ln_2", f"h.{i}.mlp", f"h.{i}"]
    return names + ["ln_f", "logits"]


def table_order(stdout, names):
    """Line index of each activation's row (the first token of the line is the name)."""
    rows = {line.split()[0]: i for i, line in enumerate(stdout.splitlines()) if line.split()}
    return [rows.get(name) for name in names]


# --- the report on unperturbed models ---------------------------------------------------------------

@pytest.mark.parametrize("reference, dtype", [("numpy-float64", "float32"), ("torch", "float32"),
                                              ("transformers", "float32"), ("transformers", "float64"),
                                              ("numpy-float64", "bfloat16")])
def test_every_layer_agrees(small_checkpoint, tmp_path, capsys, reference, dtype):
    """Every activation in the table (a row with max abs, max rel, cosine and ok for each column) and in the
    JSON, all passing. Against transformers, unless --dtype is float64, a third column: numpy float64."""
    out = tmp_path / "report.json"
    code = compare.main(["--init-from", str(small_checkpoint.path), "--reference", reference, "--dtype", dtype,
                         "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    backends = ["torch", "numpy"] + ([THIRD_COLUMN] if reference == "transformers" and dtype != "float64" else [])
    names = trace_names(small_checkpoint.n_layer)
    rows = table_order(stdout, names)
    assert None not in rows and rows == sorted(rows), stdout  # every activation, in trace order
    lines = stdout.splitlines()
    assert all(len(lines[i].split()) == 2 + 4 * len(backends) for i in rows), stdout  # name, shape, 4 per column
    numpy_dtype = "float32" if dtype == "bfloat16" else dtype  # NumPy has no bfloat16
    titles = {"torch": f"torch {dtype}", "numpy": f"numpy {numpy_dtype}", THIRD_COLUMN: "numpy float64"}
    assert lines[rows[0] - 2].split() == " ".join(titles[b] for b in backends).split()  # the group header
    assert stdout.strip().splitlines()[-1].startswith("PASS")
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["dtype"] == dtype
    assert report["reference"] == REFERENCE_NAMES[reference]
    assert list(report["backends"]) == backends
    assert report["backends"]["torch"]["dtype"] == dtype
    assert report["backends"]["numpy"]["dtype"] == numpy_dtype
    for backend in backends:
        layers = [layer for layer in report["layers"] if layer["backend"] == backend]
        assert [layer["name"] for layer in layers] == names
        assert all(layer["ok"] for layer in layers)
        assert report["backends"][backend]["first_failure"] is None
    if THIRD_COLUMN in backends:  # judged by the float64 tolerances, whatever --dtype is
        assert report["backends"][THIRD_COLUMN]["dtype"] == "float64"
        assert (report["backends"][THIRD_COLUMN]["atol"], report["backends"][THIRD_COLUMN]["rtol"]) == (1e-12, 1e-12)
    T = len(report["prompt"])
    logits = report["layers"][-1]
    assert logits["name"] == "logits" and logits["shape"] == [1, T, small_checkpoint.vocab_size]
    assert set(logits) >= {"name", "shape", "max_abs_diff", "max_rel_diff", "cosine", "ok"}
    # float64 against transformers: the two implementations agree to rounding (measured ~2e-15 relative);
    # 1e-12 is the float64 default, so a mis-mapped hidden state (off by a whole layer) could not pass.
    float64_rows = [layer for layer in report["layers"] if report["backends"][layer["backend"]]["dtype"] == "float64"]
    assert float64_rows or dtype != "float64"
    assert all(layer["max_rel_diff"] < 1e-12 for layer in float64_rows)


def test_cli_exit_code_and_table(odd_checkpoint, tmp_path):
    """The real command line: exit 0, every row printed, the JSON written."""
    out = tmp_path / "r.json"
    run = subprocess.run([sys.executable, "compare.py", "--init_from", str(odd_checkpoint.path), "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert None not in table_order(run.stdout, trace_names(odd_checkpoint.n_layer))
    assert json.loads(out.read_text())["ok"] is True


def test_non_directory_source_with_transformers(small_checkpoint, tmp_path, capsys):
    """A bare .safetensors file: the transformers reference is built from weights.load's tensors."""
    import weights

    config, params = weights.load(small_checkpoint.path)
    weights.save(tmp_path / "model.safetensors", config, params)
    code = compare.main(["--init-from", str(tmp_path / "model.safetensors"), "--reference", "transformers"])
    assert code == 0, capsys.readouterr().out


# --- fault localisation -----------------------------------------------------------------------------

def erf_gelu(x):
    """The exact GELU, x * Phi(x): not GPT-2's tanh approximation (they differ by up to ~1e-3)."""
    return 0.5 * x * (1 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2))).astype(x.dtype)


def nudge_numpy(model):
    fc = model.h[1].mlp.c_fc
    fc.weight = fc.weight * np.float32(1 + 1e-3)  # a new array: the loaded one may be a read-only memory map


def erf_numpy(model):
    mlp = model.h[1].mlp
    model.h[1].mlp = lambda x: mlp.c_proj(erf_gelu(mlp.c_fc(x)))


def erf_torch(model):
    import torch

    mlp = model.h[1].mlp
    mlp.forward = lambda x: mlp.c_proj(torch.nn.functional.gelu(mlp.c_fc(x), approximate="none"))


@pytest.fixture(scope="module")
def odd_models(odd_checkpoint):
    return odd_checkpoint, compare.load_subjects(str(odd_checkpoint.path), "float32", "cpu", "numpy-float64")


@pytest.mark.parametrize("perturb, backend", [(nudge_numpy, "numpy"), (erf_numpy, "numpy"), (erf_torch, "torch")])
def test_fault_is_located_at_its_block(odd_checkpoint, perturb, backend):
    """Block 1's MLP perturbed (of 3 blocks): that backend first fails exactly at h.1.mlp, the other passes."""
    subjects, reference = compare.load_subjects(str(odd_checkpoint.path), "float32", "cpu", "numpy-float64")
    perturb(next(s.model for s in subjects if s.label == backend))
    idx = np.array([compare.tokenizer.encode(compare.DEFAULT_PROMPT)])
    report = compare.compare(subjects, reference, idx)
    assert not report.ok
    columns = {c.subject.label: c for c in report.columns}
    broken, intact = columns[backend], columns[({"torch", "numpy"} - {backend}).pop()]
    assert broken.first_failure == "h.1.mlp"
    names = [d.name for d in broken.layers]
    assert all(d.ok for d in broken.layers[: names.index("h.1.mlp")])  # nothing earlier is blamed
    assert not broken.layers[-1].ok  # and the error reaches the logits
    assert intact.ok

    out = io.StringIO()
    compare.print_report(report, out, use_rich=False)
    text = out.getvalue()
    marked = [line for line in text.splitlines() if "first failure" in line]
    assert len(marked) == 1 and marked[0].split()[0] == "h.1.mlp" and backend in marked[0]
    mlp = broken.layers[names.index("h.1.mlp")]
    assert text.splitlines()[-1] == (f"FAIL: {broken.subject.title} first fails at h.1.mlp "
                                     f"(max abs diff {mlp.max_abs_diff:.3g} > {mlp.tolerance:.3g})")
    payload = compare.to_json(report)
    assert payload["ok"] is False and payload["backends"][backend]["first_failure"] == "h.1.mlp"
    failing = [(row["backend"], row["name"]) for row in payload["layers"] if not row["ok"]]
    assert failing[0] == (backend, "h.1.mlp") and {b for b, _ in failing} == {backend}


def test_the_numpy_float64_column_locates_a_fault_too(odd_checkpoint):
    """Against transformers, the numpy float64 column is judged by the float64 tolerance (1e-12): block 1's
    c_fc weight scaled by 1 + 1e-8 (far below float32's rounding, ~1e-7) fails there first, at h.1.mlp."""
    subjects, reference = compare.load_subjects(str(odd_checkpoint.path), "float32", "cpu", "transformers")
    assert [s.name for s in subjects] == ["torch", "numpy", THIRD_COLUMN]
    fc = subjects[2].model.h[1].mlp.c_fc
    fc.weight = fc.weight * (1 + 1e-8)  # a new float64 array (the loaded one may be a read-only memory map)
    report = compare.compare(subjects, reference, np.array([compare.tokenizer.encode(compare.DEFAULT_PROMPT)]))
    columns = {c.subject.name: c for c in report.columns}
    assert columns[THIRD_COLUMN].first_failure == "h.1.mlp" and not report.ok
    assert columns["torch"].ok and columns["numpy"].ok
    assert compare.verdict(report).startswith("FAIL: numpy float64 first fails at h.1.mlp")
    payload = compare.to_json(report)
    assert payload["backends"][THIRD_COLUMN]["first_failure"] == "h.1.mlp"
    assert {row["backend"] for row in payload["layers"] if not row["ok"]} == {THIRD_COLUMN}


def test_perturbed_cli_exits_1(odd_checkpoint, monkeypatch, capsys):
    load = compare.load_subjects

    def load_perturbed(*args):
        subjects, reference = load(*args)
        nudge_numpy(subjects[1].model)
        return subjects, reference

    monkeypatch.setattr(compare, "load_subjects", load_perturbed)
    assert compare.main(["--init-from", str(odd_checkpoint.path)]) == 1
    assert "numpy float32 first fails at h.1.mlp" in capsys.readouterr().out


# --- greedy decoding --------------------------------------------------------------------------------

def test_greedy_agreement_past_block_size(odd_checkpoint, tmp_path, capsys):
    """30 tokens after a 23-token prompt cross odd's block_size of 48: the window slides, and all still agree."""
    out = tmp_path / "r.json"
    code = compare.main(["--init-from", str(odd_checkpoint.path), "--reference", "transformers", "--greedy", "30",
                         "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    for title in ("torch float32", "numpy float32", "numpy float64"):
        assert f"{title}: all 30 tokens agree" in stdout
    greedy = json.loads(out.read_text())["greedy"]
    assert greedy["ok"] is True and greedy["n"] == 30 and len(greedy["reference"]) == 30
    for backend in ("torch", "numpy", THIRD_COLUMN):
        assert greedy["backends"][backend]["tokens"] == greedy["reference"]
        assert greedy["backends"][backend]["first_mismatch"] is None


class SwapsOneToken:
    """A model that decodes like `model` except that new token `at` becomes `token`."""

    def __init__(self, model, at, token):
        self.model, self.at, self.token = model, at, token

    def generate(self, idx, n, temperature=0):
        out = self.model.generate(idx, n, temperature=temperature)
        out[0, idx.shape[1] + self.at] = self.token
        return out


def test_greedy_divergence_is_located_and_judged(odd_models):
    checkpoint, (subjects, reference) = odd_models
    idx = np.array([compare.tokenizer.encode("The greedy decode")])
    reference_tokens = compare.greedy_tokens(reference.model, idx, 4)
    context = np.array([idx[0].tolist() + reference_tokens[:2]])
    logits = np.asarray(reference.model.trace(context)["logits"], dtype=np.float64)[0, -1]
    worst = int(logits.argmin())  # the reference's least likely token: a margin no rounding explains
    swapped = SwapsOneToken(subjects[1].model, 2, worst)

    greedy = compare.greedy_agreement(swapped, reference.model, idx, reference_tokens, *compare.TOLERANCES["float32"])
    assert (greedy.first_mismatch, greedy.backend_token, greedy.reference_token) == (2, worst, reference_tokens[2])
    assert greedy.margin == pytest.approx(logits.max() - logits.min(), rel=1e-12)  # both in float64 from one trace
    assert not greedy.near_tie and not greedy.ok
    # With a tolerance wider than the margin, the same divergence is a near-tie: reported, not failed.
    lenient = compare.greedy_agreement(swapped, reference.model, idx, reference_tokens, atol=greedy.margin, rtol=0)
    assert lenient.first_mismatch == 2 and lenient.near_tie and lenient.ok

    report = compare.compare([Subject("numpy", "float32", subjects[1].model)], reference, idx, greedy=4)
    assert report.ok  # unperturbed, as a control
    report.columns[0].greedy = greedy
    assert not report.ok and "greedy decode parts from the reference's at token 2" in compare.verdict(report)


# --- metrics ----------------------------------------------------------------------------------------

def test_layer_diff_metrics():
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    d = compare.layer_diff("x", ref + np.array([[0.0, 0.1], [0.0, -0.3]]), ref, atol=0.1, rtol=0.05)
    # rel=1e-12: each figure is a few float64 roundings of the exact value
    assert d.max_abs_diff == pytest.approx(0.3, rel=1e-12) and d.max_rel_diff == pytest.approx(0.3 / 4, rel=1e-12)
    assert d.tolerance == pytest.approx(0.1 + 0.05 * 4, rel=1e-12) and d.ok  # 0.3 <= 0.3
    a, b = np.array([3.0, 4.0]), np.array([4.0, 3.0])
    assert compare.layer_diff("c", a, b, 0, 0).cosine == pytest.approx(24 / 25, rel=1e-12)  # (12 + 12) / (5 * 5)
    assert not compare.layer_diff("tight", ref + 1e-9, ref, atol=0, rtol=1e-10).ok
    assert not compare.layer_diff("nan", np.where(ref == 0, np.nan, ref), ref, 1, 1).ok
    assert not compare.layer_diff("inf", np.where(ref == 0, np.inf, ref), ref, 1, 1).ok
    assert not compare.layer_diff("shape", ref[:1], ref, 1, 1).ok
    zeros = compare.layer_diff("zeros", np.zeros(3), np.zeros(3), 0, 0)
    assert zeros.ok and (zeros.max_rel_diff, zeros.cosine) == (0.0, 1.0)


def test_json_has_null_where_a_number_is_not_finite():
    """A NaN activation makes NaN metrics, and a greedy margin can be NaN or infinite: JSON has neither, so
    they are written as null (strict JSON parsers reject NaN), and the rest of the report stays as it was."""
    nan_layer = compare.LayerDiff("logits", (1, 2, 3), math.nan, math.nan, math.nan, 0.5, False)
    columns = [compare.Column(Subject("torch", "float32", None), 1e-5, 1e-5, [nan_layer],
                              compare.Greedy([7], 0, 8, 7, math.nan, False)),
               compare.Column(Subject("numpy", "float32", None), 1e-5, 1e-5, [nan_layer],
                              compare.Greedy([9], 0, 8, 9, math.inf, False))]
    report = compare.Report(Subject("numpy", "float64", None), np.array([[1, 2]]), columns, reference_tokens=[8])
    text = json.dumps(compare.to_json(report), allow_nan=False)  # raises on any NaN or infinity
    payload = json.loads(text)
    assert payload["greedy"]["backends"]["torch"]["margin"] is None
    assert payload["greedy"]["backends"]["numpy"]["margin"] is None
    assert payload["greedy"]["backends"]["numpy"]["backend_token"] == 9
    row = payload["layers"][0]
    assert (row["max_abs_diff"], row["max_rel_diff"], row["cosine"], row["tolerance"]) == (None, None, None, 0.5)


# --- rendering: rich and the plot -------------------------------------------------------------------

@pytest.fixture(scope="module")
def failing_report(odd_models):
    checkpoint, (subjects, reference) = odd_models
    subjects = [Subject(s.label, s.dtype, s.model) for s in subjects]
    perturbed = compare.gpt2_numpy.GPT.from_pretrained(str(checkpoint.path), dtype="float32")
    nudge_numpy(perturbed)
    subjects[1] = Subject("numpy", "float32", perturbed)
    report = compare.compare(subjects, reference, np.array([compare.tokenizer.encode(compare.DEFAULT_PROMPT)]))
    report.meta = {"source": str(checkpoint.path), "dtype": "float32", "device": "cpu", "config": "odd"}
    return report


def test_rich_table_lists_every_layer(failing_report, odd_checkpoint):
    pytest.importorskip("rich")
    out = io.StringIO()
    compare.print_report(failing_report, out, use_rich=True)
    text = out.getvalue()
    assert all(f" {name} " in text for name in trace_names(odd_checkpoint.n_layer))
    assert "first failure (numpy)" in text and "FAIL: numpy float32 first fails at h.1.mlp" in text


def test_plot_writes_a_png(failing_report, small_checkpoint, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    compare.write_plot(failing_report, tmp_path / "fail.plot")  # a PNG at exactly this path, whatever the extension
    assert compare.main(["--init-from", str(small_checkpoint.path), "--plot", str(tmp_path / "pass.png")]) == 0
    for name in ("fail.plot", "pass.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


# --- golden traces: --save-trace, --reference PATH ---------------------------------------------------

def test_a_saved_trace_is_the_reference_elsewhere(odd_checkpoint, tmp_path, capsys):
    """--save-trace writes the reference's float64 trace with its prompt and config; --reference PATH then
    judges the backends against the file alone, on its prompt, as it would on another machine."""
    from weights.trace_file import FORMAT, load_trace

    path = tmp_path / "odd.trace.safetensors"
    argv = ["--init-from", str(odd_checkpoint.path), "--save-trace", str(path), "--start", "Hi there"]
    assert compare.main(argv) == 0
    config, ids, activations, computed_by = load_trace(path)
    assert (config.n_layer, config.n_embd, config.block_size) == (3, 80, 48) and computed_by == "numpy float64"
    assert list(activations) == trace_names(odd_checkpoint.n_layer)
    assert all(a.dtype == np.float64 for a in activations.values()) and ids.dtype == np.int64
    assert activations["logits"].shape == (1, ids.shape[1], odd_checkpoint.vocab_size)
    import safetensors

    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["format"] == FORMAT
    capsys.readouterr()
    out = tmp_path / "r.json"
    assert compare.main(["--init-from", str(odd_checkpoint.path), "--reference", str(path), "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"reference: trace float64 ({path}, computed by numpy float64)" in stdout
    report = json.loads(out.read_text())
    assert report["reference"] == "trace-float64" and report["prompt"] == ids[0].tolist()
    assert all(layer["ok"] for layer in report["layers"])


def test_a_trace_written_by_another_implementation_locates_its_fault(odd_checkpoint, tmp_path, capsys):
    """A trace written through weights.trace_file by transformers (another implementation): it passes; the same
    trace with h.1.mlp off by 1e-3 relative (as a buggy implementation's would be, from there on) fails
    there first, 50x above float32's tolerance of 2e-5, and exits 1."""
    from weights.trace_file import save_trace

    model = compare.TransformersGPT(odd_checkpoint.path, checkpoint_config(odd_checkpoint))
    ids = np.random.default_rng(0).integers(0, odd_checkpoint.vocab_size, size=(1, 20))
    trace = {name: compare.as_float64(a) for name, a in model.trace(ids).items()}
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    save_trace(good, trace, ids, model.config, "transformers float64")
    names = list(trace)
    broken = {name: a * (1 + 1e-3) if names.index(name) >= names.index("h.1.mlp") else a for name, a in trace.items()}
    save_trace(bad, broken, ids, model.config, "a buggy port")
    assert compare.main(["--init-from", str(odd_checkpoint.path), "--reference", str(good)]) == 0
    capsys.readouterr()
    assert compare.main(["--init-from", str(odd_checkpoint.path), "--reference", str(bad)]) == 1
    assert "torch float32 first fails at h.1.mlp" in capsys.readouterr().out


def checkpoint_config(checkpoint):
    import weights

    return weights.load(checkpoint.path)[0]


def test_bad_trace_files_exit_2_with_one_line(odd_checkpoint, small_checkpoint, tmp_path, capsys):
    from safetensors.numpy import save_file

    from weights.trace_file import load_trace, save_trace

    good = tmp_path / "good.safetensors"
    assert compare.main(["--init-from", str(small_checkpoint.path), "--save-trace", str(good)]) == 0
    config, ids, activations, _ = load_trace(good)
    truncated = tmp_path / "truncated.safetensors"
    save_file({"prompt_ids": ids, "embed": activations["embed"]}, str(truncated),
              metadata={"format": "gpt2-dual-trace/1", "config": json.dumps(vars(config)),
                        "activations": json.dumps(list(activations))})
    outside = tmp_path / "outside.safetensors"  # a token id past the vocabulary: an embedding would fail
    save_trace(outside, activations, np.full_like(ids, config.vocab_size), config, "a bad writer")
    not_a_list = tmp_path / "not-a-list.safetensors"  # the activation list is a number
    save_file({"prompt_ids": ids}, str(not_a_list),
              metadata={"format": "gpt2-dual-trace/1", "config": json.dumps(vars(config)), "activations": "5"})
    huge = tmp_path / "huge.safetensors"  # a billion layers claimed: refused before a name is made for each
    save_file({"prompt_ids": ids}, str(huge),
              metadata={"format": "gpt2-dual-trace/1", "config": json.dumps({**vars(config), "n_layer": 10**9}),
                        "activations": json.dumps(list(activations))})
    plain = tmp_path / "weights.safetensors"
    save_file({"x": np.zeros(3)}, str(plain))
    text = tmp_path / "notes.txt"
    text.write_text("not a trace")
    capsys.readouterr()
    small = str(small_checkpoint.path)
    exits_2_with(["--init-from", small, "--reference", str(truncated)], "an incomplete trace (missing h.0.ln_1", capsys)
    exits_2_with(["--init-from", small, "--reference", str(not_a_list)], "activation list is unreadable", capsys)
    exits_2_with(["--init-from", small, "--reference", str(huge)], "listed for 1000000000 layers", capsys)
    exits_2_with(["--init-from", small, "--reference", str(plain)], "not a trace file", capsys)
    exits_2_with(["--init-from", small, "--reference", str(outside)], "each below 50257", capsys)
    exits_2_with(["--init-from", small, "--reference", str(text)], "not a safetensors file", capsys)
    exits_2_with(["--init-from", str(odd_checkpoint.path), "--reference", str(good)], "traces another model", capsys)
    exits_2_with(["--init-from", small, "--reference", str(good), "--start", ""], "--start: not with a trace", capsys)
    exits_2_with(["--init-from", small, "--reference", str(good), "--greedy", "3"], "--greedy: not with a trace", capsys)
    exits_2_with(["--init-from", small, "--save-trace", str(tmp_path / "no" / "t.safetensors")], "no such directory", capsys)


def test_float64_defaults_to_an_independent_reference():
    """With --dtype float64 the NumPy backend is itself the numpy-float64 reference: a column that could not fail.
    So the default reference is then transformers, and asking for numpy-float64 is a usage error."""
    assert compare.parse_args(["--init-from", "x", "--dtype", "float64"]).reference == "transformers"
    assert compare.parse_args(["--init-from", "x"]).reference == "numpy-float64"
    assert compare.parse_args(["--init-from", "x", "--dtype", "float64", "--reference", "torch"]).reference == "torch"
    with pytest.raises(SystemExit) as exit_info:
        compare.parse_args(["--init-from", "x", "--dtype", "float64", "--reference", "numpy-float64"])
    assert exit_info.value.code == 2


# --- bad input: one line on stderr, exit 2 ----------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--init-from", "no/such/checkpoint"], "no such file or directory"),
    (["--init-from", "{small}", "--reference", "tensorflow"], "neither numpy-float64, torch, transformers nor a trace file"),
    (["--init-from", "{small}", "--atol", "-1"], "out of range"),
    (["--init-from", "{small}", "--rtol", "tight"], "'tight' is not a number"),
    (["--init-from", "{small}", "--greedy", "2.5"], "'2.5' is not an integer"),
    (["--start", "hi"], "--init-from"),
    (["--init-from", "{small}", "--json", "no/such/directory/r.json"], "no such directory"),
])  # fmt: skip
def test_bad_input_exits_2_with_one_line(small_checkpoint, args, message):
    args = [a.replace("{small}", str(small_checkpoint.path)) for a in args]
    run = subprocess.run([sys.executable, "compare.py", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("compare.py: error:")
    assert message in run.stderr and "Traceback" not in run.stderr and run.stdout == ""


def exits_2_with(argv, message, capsys):
    """In-process, to spare a torch import per case: still one line on stderr and exit status 2."""
    with pytest.raises(SystemExit) as exit:
        compare.main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_missing_prompt_file(small_checkpoint, tmp_path, capsys):
    argv = ["--init-from", str(small_checkpoint.path), "--start", f"FILE:{tmp_path / 'missing.txt'}"]
    exits_2_with(argv, "cannot read the prompt file", capsys)


def test_prompt_outside_the_vocabulary(small_checkpoint, tmp_path, capsys):
    import weights

    config, params = weights.load(small_checkpoint.path)
    config.vocab_size = 1000
    weights.save(tmp_path / "v1000.safetensors", config, {**params, "wte.weight": params["wte.weight"][:1000]})
    exits_2_with(["--init-from", str(tmp_path / "v1000.safetensors")], "vocabulary has 1000 tokens", capsys)


def test_transformers_reference_needs_biases(small_checkpoint, tmp_path, capsys):
    import weights

    config, params = weights.load(small_checkpoint.path)
    config.bias = False
    weights.save(tmp_path / "nobias.safetensors", config, {k: v for k, v in params.items() if not k.endswith(".bias")})
    argv = ["--init-from", str(tmp_path / "nobias.safetensors"), "--reference", "transformers"]
    exits_2_with(argv, "bias=False", capsys)


def test_a_torch_runtime_error_is_one_line(small_checkpoint, monkeypatch, capsys):
    """A RuntimeError from torch mid-comparison (CUDA out of memory, say) is one stderr line and exit 1: the run
    failed, as in sample.py (not bad input)."""

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details\nand more")

    monkeypatch.setattr(compare, "compare", out_of_memory)
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--init-from", str(small_checkpoint.path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "compare.py: error: CUDA out of memory. Tried to allocate 2.00 GiB\n"
