"""Layer-by-layer agreement of the PyTorch and NumPy backends with a float64 reference.

    uv run compare.py --init-from gpt2
    uv run compare.py --init-from gpt2 --dtype bfloat16 --reference transformers --greedy 20
    uv run compare.py --init-from out/ckpt.pt --json report.json --plot report.png
    uv run compare.py --init-from gpt2 --save-trace gpt2.trace.safetensors       # on one machine, then
    uv run compare.py --init-from gpt2 --device cuda --reference gpt2.trace.safetensors   # on another

The prompt runs through the torch and the NumPy backend in --dtype, and through a reference in float64:
the NumPy backend (default), the torch backend, or transformers' GPT2LMHeadModel read from the same
files. Every activation of the trace (embed; per block ln_1, attn, ln_2, mlp and the block's output
h.{i}; ln_f; logits) is compared with the reference's, and the first one out of tolerance is marked:
a bug shows where it happens, not layers later in the logits.

--save-trace PATH writes the reference's float64 trace and the prompt's ids to a .safetensors file
(layout: weights/trace_file.py, and the README); --reference PATH compares the backends with such a file
instead of a model, on that file's prompt. So a GPU run is checked against a CPU float64 trace made on
another machine, and any other implementation that writes the same file is checked layer by layer.

On CUDA, float32 means float32: compare.py switches TF32 off for matrix products (and cuDNN), so a float32
column never computes with TF32's 10-bit mantissa behind the tolerances' back.

With --reference transformers the table has a third column, "numpy float64": the NumPy backend in
float64 against transformers, judged by the float64 tolerances. So one run shows both that the backends
agree in --dtype and that our implementation in (nearly) exact arithmetic is transformers' to ~1e-14.
With --dtype float64 the NumPy column is that check already, and there is no third.

An activation passes when

    max |backend - reference|  <=  atol + rtol * max |reference|

over all its elements: an absolute floor for activations near zero, plus a part that grows with the
activation's size (GPT-2's residual stream grows with depth, and its rounding grows with it). The
defaults depend on the dtype the backend computes in; --atol/--rtol override them for every backend:

    dtype      atol = rtol   largest error measured   deliberate bugs measured (in block 1)
    float64    1e-12         7.2e-15                  all of those below: 2e-5 or more
    float32    2e-5          1.8e-6                   GELU's erf form 5e-5 to 1.7e-4; mlp.c_fc.weight x (1 + 1e-4)
                                                      3e-5 to 1e-4; one of its entries + 1e-3: 2e-5 to 7e-5
    bfloat16   0.2           4.4e-2                   attending to future tokens 0.17 to 1.1

An error here is the smallest atol = rtol that passes: the max over activations of
max_abs_diff / (1 + max|reference|). Measured against numpy-float64 and transformers (which agree to
1e-14) on five random checkpoints (2 to 12 layers, n_embd 36 to 768, among them GPT-2 124M's shape both
with transformers' initialisation and with weights scaled up) and prompts of 24 to 1024 tokens, on a CPU.
float32's tolerance is 11x its largest error and still 2.5x below the erf GELU. bfloat16's is 4.5x its
largest error (9x at 124M): it catches gross bugs only. float64's rounding is far below any bug, so
its tolerance keeps 100x headroom.

NumPy has no bfloat16: with --dtype bfloat16 the NumPy backend computes in float32 and is judged by the
float32 tolerances. The max rel diff column is max abs diff / max |reference|; cosine similarity is
reported too, but does not decide pass or fail.

--greedy N decodes N tokens greedily with every model. Where a backend's tokens part from the
reference's, the reference's two candidates may be closer than twice the logits tolerance: rounding
alone can flip such a near-tie, so it is reported but passes. A wider margin fails.

An activation with a NaN or an infinity fails. The table marks the first such activation of every model,
the reference's included, as "first non-finite": where NaN weights first reach the computation, or where
a dtype overflowed. A model whose logits are not finite decodes no greedy tokens (the sampler refuses
them); a reference that is not finite decodes none, and every backend fails against it.

Exit status: 0 everything passes, 1 something fails, 2 bad input (usage, a checkpoint or prompt that
cannot be read, an error of transformers' while building the reference, a report that cannot be written).
"""

import argparse
import importlib.util
import json
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import gpt2_numpy
from weights import NonFiniteLogitsError, WeightsError, cli, tokenizer
from weights.trace_file import as_float64, load_trace, save_trace

DEFAULT_PROMPT = "Hello, I'm a language model, and I compute the same function in PyTorch as in NumPy."
DTYPES = ("float32", "float64", "bfloat16")
REFERENCES = ("numpy-float64", "torch", "transformers")
# dtype -> (atol, rtol), chosen from measurements: see the module docstring.
TOLERANCES = {"float64": (1e-12, 1e-12), "float32": (2e-5, 2e-5), "bfloat16": (0.2, 0.2)}
CRITERION = "max_abs_diff <= atol + rtol * max|reference|"


# --- diff metrics -----------------------------------------------------------------------------------

@dataclass
class LayerDiff:
    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / max |reference|
    cosine: float
    tolerance: float  # atol + rtol * max |reference|
    ok: bool


def layer_diff(name, actual, reference, atol, rtol) -> LayerDiff:
    """How far actual is from reference (float64 arrays). A NaN or inf fails: it compares False below."""
    if actual.shape != reference.shape:
        return LayerDiff(name, actual.shape, math.nan, math.nan, math.nan, math.nan, False)
    scale = float(np.abs(reference).max(initial=0.0))
    max_abs = float(np.abs(actual - reference).max(initial=0.0))
    # != 0 rather than > 0: a NaN in the reference makes these NaN, not a made-up inf or 0
    max_rel = max_abs / scale if scale != 0 else (0.0 if max_abs == 0 else math.inf)
    norms = float(np.linalg.norm(actual) * np.linalg.norm(reference))
    cosine = float(np.vdot(actual, reference)) / norms if norms != 0 else float(max_abs == 0)
    tolerance = atol + rtol * scale
    return LayerDiff(name, reference.shape, max_abs, max_rel, cosine, tolerance, bool(max_abs <= tolerance))


# --- the models -------------------------------------------------------------------------------------

@dataclass
class Subject:
    """One model in the comparison: a backend in a dtype, or the reference."""

    label: str  # torch, numpy, transformers
    dtype: str  # what it computes in
    model: object  # has .config, trace(idx) -> OrderedDict, generate(idx, n, temperature=0) -> (B, T + n)
    name: str = ""  # its key in the JSON and the plot, unique among the columns: the label unless given

    def __post_init__(self):
        self.name = self.name or self.label

    @property
    def title(self):
        return f"{self.label} {self.dtype}"


class TransformersGPT:
    """transformers' GPT2LMHeadModel in float64, behind the backends' interface (config, trace, generate).

    A Hugging Face directory (or a model name's hub snapshot, the files weights.load reads) is read by
    transformers' own loader, so this reference shares no code with ours. A nanoGPT ckpt.pt or a bare
    .safetensors file is read by weights.load and copied in: Conv1D keeps the canonical (in, out) layout.
    """

    def __init__(self, source, config):
        import torch
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel

        import weights
        from weights.hub import HUB_REPOS, download

        transformers.utils.logging.set_verbosity_error()  # no advice about generation configs
        transformers.utils.logging.disable_progress_bar()  # nor a bar for loading a few tensors
        self.config = config
        path = Path(source)
        if not path.exists() and str(source) in HUB_REPOS:  # as weights.load resolves a model name
            path = download(str(source))
        params = None
        if not path.is_dir():
            if not config.bias:
                raise ValueError("transformers' GPT-2 always has biases but this checkpoint has none (bias=False); "
                                 "use --reference numpy-float64")
            _, params = weights.load(path)
        try:
            if params is None:
                # float64 when loading, whatever config.json's "dtype" (or "torch_dtype") says: transformers 5
                # honours it, and a model saved in bfloat16 would otherwise load rounded to bfloat16, which no
                # later cast undoes. (The dtype argument needs transformers 4.56: see pyproject.toml.)
                model = GPT2LMHeadModel.from_pretrained(path, dtype=torch.float64)
            else:
                model = GPT2LMHeadModel(GPT2Config(
                    vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                    n_layer=config.n_layer, n_head=config.n_head, activation_function="gelu_new"))
                state = {name: torch.from_numpy(np.array(array)) for name, array in params.items()}
                model.transformer.load_state_dict(state)  # canonical names are GPT2Model's; lm_head is tied to wte
        except Exception as e:  # transformers refuses what our loader accepted: its errors are many, and long
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"transformers cannot build the reference from {source}: {first}") from None
        self.model = model.to(torch.float64).eval()

    def trace(self, idx) -> OrderedDict:
        """Our trace, from transformers' hidden states plus forward hooks for what it does not expose.

        hidden_states[0] is the embedding and hidden_states[i] the input of block i (our h.{i-1}); but the
        last one, hidden_states[n_layer], is after ln_f, so the last block's own output needs a hook."""
        import torch

        blocks = self.model.transformer.h
        n = len(blocks)
        captured = {}

        def keep(name, first=False):
            def hook(module, inputs, output):
                captured[name] = output[0] if first else output  # attention returns (output, weights)

            return hook

        hooks = [blocks[n - 1].register_forward_hook(keep(f"h.{n - 1}"))]
        for i, block in enumerate(blocks):
            hooks += [block.ln_1.register_forward_hook(keep(f"h.{i}.ln_1")),
                      block.attn.register_forward_hook(keep(f"h.{i}.attn", first=True)),
                      block.ln_2.register_forward_hook(keep(f"h.{i}.ln_2")),
                      block.mlp.register_forward_hook(keep(f"h.{i}.mlp"))]  # fmt: skip
        try:
            with torch.no_grad():
                out = self.model(torch.as_tensor(np.asarray(idx)), output_hidden_states=True, use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()
        hidden = out.hidden_states  # n_layer + 1 of (B, T, C)
        trace = OrderedDict(embed=hidden[0])
        for i in range(n):
            for part in ("ln_1", "attn", "ln_2", "mlp"):
                trace[f"h.{i}.{part}"] = captured[f"h.{i}.{part}"]
            trace[f"h.{i}"] = hidden[i + 1] if i + 1 < n else captured[f"h.{i}"]
        trace["ln_f"] = hidden[n]
        trace["logits"] = out.logits  # (B, T, vocab_size)
        return trace

    def generate(self, idx, max_new_tokens, temperature=0):
        """Decode through weights.sampling's loop, as the backends do (without a cache: a full forward a token)."""
        import torch

        from weights.sampling import generate_tokens

        def forward(ids, start):
            with torch.no_grad():
                return self.model(torch.as_tensor(ids), use_cache=False).logits[:, -1].numpy()  # (B, V)

        idx = np.asarray(idx, dtype=np.int64)  # (B, T)
        steps = generate_tokens(forward, idx, max_new_tokens, self.config.block_size, np.random.default_rng(0),
                                temperature, use_cache=False)
        return np.concatenate([idx, *[t[:, None] for t in steps]], axis=1)  # (B, T + max_new_tokens)


class TraceFile:
    """A golden trace (weights/trace_file.py) as a reference: the activations of a forward pass over the file's
    own prompt, computed elsewhere (another machine, another implementation). It cannot decode."""

    def __init__(self, path):
        self.path = path
        self.config, self.prompt_ids, self.activations, self.computed_by = load_trace(path)

    def trace(self, idx) -> OrderedDict:
        if not np.array_equal(np.asarray(idx), self.prompt_ids):
            raise ValueError(f"{self.path} traces another prompt")
        return self.activations


def load_subjects(source, dtype, device, reference) -> tuple[list[Subject], Subject]:
    """The torch and NumPy backends in dtype (NumPy: float32 for bfloat16), and the float64 reference on the CPU.
    Against transformers, the NumPy backend in float64 too, unless dtype is float64 already.

    The NumPy models load first: a missing or broken checkpoint is reported before torch is even imported."""
    numpy_dtype = dtype if dtype in gpt2_numpy.DTYPES else "float32"  # NumPy has no bfloat16
    numpy_model = gpt2_numpy.GPT.from_pretrained(source, dtype=numpy_dtype)
    wants_float64 = reference == "numpy-float64" or (reference == "transformers" and numpy_dtype != "float64")
    numpy_float64 = gpt2_numpy.GPT.from_pretrained(source, dtype="float64") if wants_float64 else None
    import gpt2_torch

    subjects = [Subject("torch", dtype, gpt2_torch.GPT.from_pretrained(source, device=device, dtype=dtype)),
                Subject("numpy", numpy_dtype, numpy_model)]
    if reference == "numpy-float64":
        return subjects, Subject("numpy", "float64", numpy_float64)
    if reference == "torch":
        return subjects, Subject("torch", "float64", gpt2_torch.GPT.from_pretrained(source, dtype="float64"))
    if isinstance(reference, TraceFile):
        return subjects, Subject("trace", "float64", reference)
    if numpy_float64 is not None:  # our arithmetic, nearly exact, against an independent implementation's
        subjects.append(Subject("numpy", "float64", numpy_float64, name="numpy-float64"))
    return subjects, Subject("transformers", "float64", TransformersGPT(source, numpy_model.config))


# --- the comparison ---------------------------------------------------------------------------------

@dataclass
class Greedy:
    """A backend's greedy decode against the reference's."""

    tokens: list[int]
    first_mismatch: int | None = None  # index among the new tokens, None if all agree
    reference_token: int | None = None  # the two choices at first_mismatch
    backend_token: int | None = None
    margin: float | None = None  # reference logit of its choice minus that of the backend's choice
    near_tie: bool | None = None  # margin <= 2 x the logits tolerance: rounding can flip it
    non_finite: bool = False  # the backend's logits went NaN or infinite: no tokens

    @property
    def ok(self):
        return not self.non_finite and (self.first_mismatch is None or bool(self.near_tie))


@dataclass
class Column:
    """One backend against the reference: a row per activation, and its greedy decode."""

    subject: Subject
    atol: float
    rtol: float
    layers: list[LayerDiff]
    greedy: Greedy | None = None
    first_non_finite: str | None = None  # the first activation of the backend's trace holding a NaN or inf

    @property
    def first_failure(self) -> str | None:
        return next((d.name for d in self.layers if not d.ok), None)

    @property
    def ok(self):
        return self.first_failure is None and (self.greedy is None or self.greedy.ok)


@dataclass
class Report:
    reference: Subject
    idx: np.ndarray  # (1, T) the prompt
    columns: list[Column]
    reference_tokens: list[int] | None = None
    expected: OrderedDict = field(default_factory=OrderedDict)  # the reference's trace, float64
    meta: dict = field(default_factory=dict)  # source, device: for the header and the JSON
    reference_non_finite: str | None = None  # the first activation of the reference's trace holding a NaN or inf

    @property
    def ok(self):
        return all(c.ok for c in self.columns)


def tolerance(dtype, atol=None, rtol=None) -> tuple[float, float]:
    default_atol, default_rtol = TOLERANCES[dtype]
    return (default_atol if atol is None else atol), (default_rtol if rtol is None else rtol)


def compare(subjects, reference, idx, atol=None, rtol=None, greedy=0) -> Report:
    """Compare every subject's trace of idx (1, T) with the reference's, activation by activation, and
    (greedy > 0) their greedy decodes of that many tokens. atol/rtol default to each subject's dtype's."""
    idx = np.asarray(idx, dtype=np.int64)
    expected = OrderedDict((name, as_float64(x)) for name, x in reference.model.trace(idx).items())
    reference_non_finite = first_non_finite(expected)
    # A reference whose logits are not finite has no greedy decode to compare with (the sampler refuses them).
    decode = greedy and reference_non_finite is None
    reference_tokens = greedy_tokens(reference.model, idx, greedy) if decode else None
    columns = []
    for subject in subjects:
        a, r = tolerance(subject.dtype, atol, rtol)
        trace = subject.model.trace(idx)
        missing = np.full(0, math.nan)  # an activation the backend does not produce fails on its shape
        activations = OrderedDict((name, as_float64(trace.get(name, missing))) for name in expected)
        layers = [layer_diff(name, activations[name], ref, a, r) for name, ref in expected.items()]
        column = Column(subject, a, r, layers, first_non_finite=first_non_finite(activations))
        if decode:
            column.greedy = greedy_agreement(subject.model, reference.model, idx, reference_tokens, a, r)
        columns.append(column)
    return Report(reference, idx, columns, reference_tokens, expected=expected,
                  reference_non_finite=reference_non_finite)


def first_non_finite(activations) -> str | None:
    """The name of the first activation (in trace order) that holds a NaN or an infinity, or None."""
    return next((name for name, x in activations.items() if not np.isfinite(x).all()), None)


def greedy_tokens(model, idx, n) -> list[int]:
    """The n tokens a greedy decode appends to idx (1, T)."""
    return [int(t) for t in np.asarray(model.generate(idx, n, temperature=0))[0, idx.shape[1]:]]


def greedy_agreement(model, reference_model, idx, reference_tokens, atol, rtol) -> Greedy:
    try:
        tokens = greedy_tokens(model, idx, len(reference_tokens))
    except NonFiniteLogitsError:
        return Greedy([], non_finite=True)
    mismatch = next((i for i, (a, b) in enumerate(zip(tokens, reference_tokens)) if a != b), None)
    if mismatch is None:
        return Greedy(tokens)
    # Both decodes saw the same context up to here: were the reference's two candidates nearly tied?
    agreed = np.array([reference_tokens[:mismatch]], dtype=np.int64)  # (1, mismatch): int even when empty
    context = np.concatenate([idx, agreed], axis=1)[:, -reference_model.config.block_size:]
    logits = as_float64(reference_model.trace(context)["logits"])[0, -1]  # (V,)
    ours, theirs = tokens[mismatch], reference_tokens[mismatch]
    margin = float(logits[theirs] - logits[ours])
    near_tie = margin <= 2 * (atol + rtol * np.abs(logits).max())
    return Greedy(tokens, mismatch, theirs, ours, margin, bool(near_tie))


# --- output: table, JSON, plot ----------------------------------------------------------------------

def header_lines(report: Report) -> list[str]:
    meta, ref = report.meta, report.reference
    where_ref = " (cpu)"
    if isinstance(ref.model, TraceFile):
        where_ref = f" ({ref.model.path}, computed by {ref.model.computed_by})"
    lines = [f"checkpoint: {meta.get('source', '?')}  ({meta.get('config', '')})",
             f"prompt: {report.idx.shape[1]} tokens; reference: {ref.title}{where_ref}"]  # fmt: skip
    for c in report.columns:
        s = c.subject
        where = f" on {meta['device']}" if s.label == "torch" and "device" in meta else ""
        if where and meta["device"].startswith("cuda") and s.dtype == "float32":
            where += " (TF32 off: float32 products in float32)"
        note = " (NumPy has no bfloat16)" if s.name == "numpy" and meta.get("dtype") == "bfloat16" else ""
        lines.append(f"under test: {s.title}{where}{note}: pass if {CRITERION}, "
                     f"atol={c.atol:g} rtol={c.rtol:g}")
    return lines


def table_rows(report: Report) -> tuple[list[str], list[str], list[list[str]]]:
    """The table as text: group headers (a backend over its four columns), column headers, rows."""
    groups, headers = ["", ""], ["name", "shape"]
    for c in report.columns:
        groups += [c.subject.title, "", "", ""]
        headers += ["max abs", "max rel", "cosine", "ok"]
    groups.append("")
    headers.append("")
    firsts, non_finite = {}, {}  # activation -> the backends that first fail there / first go non-finite there
    if report.reference_non_finite is not None:
        non_finite[report.reference_non_finite] = ["reference"]
    for c in report.columns:
        if c.first_failure is not None:
            firsts.setdefault(c.first_failure, []).append(c.subject.name)
        if c.first_non_finite is not None:
            non_finite.setdefault(c.first_non_finite, []).append(c.subject.name)
    rows = []
    for i, name in enumerate(d.name for d in report.columns[0].layers):
        row = [name, "x".join(map(str, report.columns[0].layers[i].shape))]
        for c in report.columns:
            d = c.layers[i]
            row += [f"{d.max_abs_diff:.2e}", f"{d.max_rel_diff:.2e}", f"{d.cosine:.8f}", "ok" if d.ok else "FAIL"]
        marks = ([f"first failure ({', '.join(firsts[name])})"] if name in firsts else []) + (
            [f"first non-finite ({', '.join(non_finite[name])})"] if name in non_finite else [])
        row.append(f"<- {'; '.join(marks)}" if marks else "")
        rows.append(row)
    return groups, headers, rows


def greedy_lines(report: Report) -> list[str]:
    if report.reference_tokens is None:
        return []
    n = len(report.reference_tokens)
    lines = [f"greedy, {n} tokens: {report.reference.title}: {tokenizer.decode(report.reference_tokens)!r}"]
    for c in report.columns:
        g = c.greedy
        if g.non_finite:
            lines.append(f"  {c.subject.title}: no tokens: its logits are NaN or infinite")
        elif g.first_mismatch is None:
            lines.append(f"  {c.subject.title}: all {n} tokens agree")
        else:
            judged = "a near-tie, within tolerance" if g.near_tie else "FAIL: wider than the tolerance allows"
            lines.append(f"  {c.subject.title}: first disagreement at new token {g.first_mismatch} ({g.backend_token} "
                         f"instead of {g.reference_token}; reference margin {g.margin:.3g}: {judged})")
    return lines


def verdict(report: Report) -> str:
    if report.reference_non_finite is not None:  # then every backend fails against it: name the cause instead
        parts = [f"the reference {report.reference.title} is not finite from {report.reference_non_finite} on "
                 "(NaN or infinite weights?)"]
        parts += [f"{c.subject.title} is not finite from {c.first_non_finite} on"
                  for c in report.columns if c.first_non_finite is not None]
        return "FAIL: " + "; ".join(parts)
    parts = []
    for c in report.columns:
        if c.first_failure is not None and c.first_failure == c.first_non_finite:
            parts.append(f"{c.subject.title} first fails at {c.first_failure}, where it is no longer finite")
        elif c.first_failure is not None:
            d = next(d for d in c.layers if not d.ok)
            parts.append(f"{c.subject.title} first fails at {d.name} "
                         f"(max abs diff {d.max_abs_diff:.3g} > {d.tolerance:.3g})"
                         + (f", and is not finite from {c.first_non_finite} on" if c.first_non_finite else ""))
        elif c.greedy is not None and c.greedy.non_finite:
            parts.append(f"{c.subject.title}'s logits go NaN or infinite in its greedy decode")
        elif not c.ok:
            parts.append(f"{c.subject.title}'s greedy decode parts from the reference's at token "
                         f"{c.greedy.first_mismatch}")
    if parts:
        return "FAIL: " + "; ".join(parts)
    titles = [c.subject.title for c in report.columns]
    backends = f"{', '.join(titles[:-1])} and {titles[-1]}" if len(titles) > 1 else titles[0]
    return f"PASS: {backends} agree with {report.reference.title} at all {len(report.columns[0].layers)} activations"


def print_report(report: Report, out=None, use_rich=None):
    """A rich table on a terminal (when rich is installed), aligned plain text otherwise."""
    out = out or sys.stdout
    if use_rich is None:
        use_rich = out.isatty() and importlib.util.find_spec("rich") is not None
    (print_rich if use_rich else print_plain)(report, out)


def print_plain(report: Report, out):
    lines = header_lines(report) + [""] + plain_table(*table_rows(report))
    out.write("\n".join(lines + [""] + greedy_lines(report) + [verdict(report)]) + "\n")


def print_rich(report: Report, out):
    from rich import box
    from rich.console import Console
    from rich.table import Table

    groups, headers, rows = table_rows(report)
    table = Table(title="\n".join(header_lines(report)), title_justify="left", box=box.SIMPLE_HEAD)
    for j, (group, header) in enumerate(zip(groups, headers)):
        table.add_column(f"{group}\n{header}", justify="left" if j < 2 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(f"[bold red]{cell}[/]" if cell == "FAIL" or cell.startswith("<-") else cell for cell in row))
    console = Console(file=out, highlight=False)
    # Never squeeze the numbers into ellipses: on a narrow terminal, long lines wrap instead.
    console.width = max(console.width, console.measure(table, options=console.options.update_width(10**4)).maximum)
    console.print(table)
    for line in greedy_lines(report):
        console.print(line)
    console.print(verdict(report), style="bold green" if report.ok else "bold red")


def plain_table(groups, headers, rows) -> list[str]:
    """Aligned text: names left, numbers right; a group label spans its backend's four columns."""
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(headers)]
    for j, group in enumerate(groups):
        if group:  # widen the group's last column if the label is longer than the four
            widths[j + 3] += max(0, len(group) - (sum(widths[j : j + 4]) + 2 * 3))
    group_cells, j = [], 0
    while j < len(groups):
        span = 4 if groups[j] else 1
        group_cells.append(groups[j].ljust(sum(widths[j : j + span]) + 2 * (span - 1)))
        j += span
    lines = ["  ".join(group_cells).rstrip()]
    for row in [headers] + rows:
        cells = [c.ljust(w) if j < 2 or j == len(row) - 1 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _nulls_for_non_finite(value):
    """value with every NaN or infinity (a failed metric, a NaN logit's margin) as None: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _nulls_for_non_finite(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_nulls_for_non_finite(v) for v in value]
    return value


def to_json(report: Report) -> dict:
    """The report as JSON: "layers" has one row per backend and activation (trace order within each backend),
    "backends" a summary per backend, "greedy" the decodes (null without --greedy). A backend is named by its
    Subject.name: torch, numpy, and numpy-float64 for the third column against transformers. NaN and
    infinities are written as null."""
    layers, backends = [], {}
    for c in report.columns:
        s = c.subject
        backends[s.name] = {"dtype": s.dtype, "atol": c.atol, "rtol": c.rtol, "ok": c.ok,
                            "first_failure": c.first_failure, "first_non_finite": c.first_non_finite}
        for d in c.layers:
            metrics = {key: getattr(d, key) for key in ("max_abs_diff", "max_rel_diff", "cosine", "tolerance")}
            layers.append({"backend": s.name, "name": d.name, "shape": list(d.shape), **metrics, "ok": d.ok})
    greedy = None
    if report.reference_tokens is not None:
        greedy = {"n": len(report.reference_tokens), "reference": report.reference_tokens,
                  "ok": all(c.greedy.ok for c in report.columns),
                  "backends": {c.subject.name: {**vars(c.greedy), "ok": c.greedy.ok} for c in report.columns}}
    meta = report.meta
    return _nulls_for_non_finite({
        "ok": report.ok, "reference": report.reference.title.replace(" ", "-"),
        "reference_first_non_finite": report.reference_non_finite, "dtype": meta.get("dtype"),
        "source": meta.get("source"), "device": meta.get("device"), "criterion": CRITERION,
        "prompt": report.idx[0].tolist(), "backends": backends, "layers": layers, "greedy": greedy})


def write_json(report: Report, path):
    Path(path).write_text(json.dumps(to_json(report), indent=2) + "\n", encoding="utf-8")


def write_trace(report: Report, path):
    """The reference's trace as a golden trace file (weights/trace_file.py), for --reference PATH elsewhere."""
    save_trace(path, report.expected, report.idx, report.reference.model.config, report.reference.title)


def write_plot(report: Report, path):
    """Max abs diff per activation on a log scale, a line per backend, and the tolerance dashed (once for the
    backends that share it; otherwise in each backend's colour). The first failure is marked by a red cross."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = [d.name for d in report.columns[0].layers]
    x = np.arange(len(names))
    colors = dict(zip((c.subject.name for c in report.columns), ("tab:blue", "tab:orange", "tab:green")))
    fig, ax = plt.subplots(figsize=(max(8, 0.2 * len(names)), 5), layout="constrained")
    for c in report.columns:
        ax.plot(x, [d.max_abs_diff for d in c.layers], marker=".", color=colors[c.subject.name],
                label=f"{c.subject.title} vs {report.reference.title}")
        if c.first_failure is not None:
            d = c.layers[names.index(c.first_failure)]
            ax.plot(names.index(d.name), d.max_abs_diff, "x", color="red", markersize=12, markeredgewidth=2)
            ax.annotate(f"first failure: {d.name}", (names.index(d.name), d.max_abs_diff), color="red",
                        textcoords="offset points", xytext=(8, 8), bbox=dict(facecolor="white", edgecolor="none"))
    tolerances = {}  # (atol, rtol) -> the columns judged by it
    for c in report.columns:
        tolerances.setdefault((c.atol, c.rtol), []).append(c)
    for (atol, rtol), columns in tolerances.items():
        color = "black" if len(tolerances) == 1 else colors[columns[0].subject.name]
        who = ", ".join(c.subject.title for c in columns)
        ax.plot(x, [d.tolerance for d in columns[0].layers], linestyle="--", color=color,
                label=f"tolerance: atol {atol:g} + rtol {rtol:g} x max|reference| ({who})")
    ax.set_yscale("log", nonpositive="mask")  # exact zeros (a backend against itself) are left out
    # Every activation is labelled on small models; on deep ones only embed, the block outputs, ln_f and logits.
    ticks = [i for i, name in enumerate(names) if len(names) <= 60 or name.count(".") < 2]
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_ylabel("max |backend - reference|")
    ax.set_title(f"{report.meta.get('source', '')}: every activation against {report.reference.title}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, format="png")  # a PNG at exactly path, whatever its extension
    plt.close(fig)


# --- command line -----------------------------------------------------------------------------------

def _tolerance_help():
    return "; ".join(f"{d}: atol {a:g}, rtol {r:g}" for d, (a, r) in TOLERANCES.items())


def parse_args(argv=None):
    p = cli.Parser(prog="compare.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                   description="Compare the torch and NumPy backends with a float64 reference, activation by "
                               "activation.",
                   epilog=f"An activation passes when {CRITERION}.\nDefault tolerances by dtype: {_tolerance_help()}.\n"
                          "Exit status: 0 all pass, 1 something fails (an error of torch's included), 2 bad "
                          "input: usage, a checkpoint or prompt that cannot be read, a report that cannot be "
                          "written.")  # fmt: skip
    p.add_argument("--init-from", "--init_from", dest="init_from", required=True,
                   help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 (Hugging Face hub, cached), or the path "
                        "of a Hugging Face directory, a .safetensors file or a nanoGPT ckpt.pt")
    p.add_argument("--start", default=None,
                   help=f"the prompt; FILE:path reads it from a UTF-8 text file (a regular file of at most "
                        f"{cli.PROMPT_LIMIT // 2**20} MiB); not with a trace file as --reference, which holds its "
                        f"prompt (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--device", default="cpu", help="where the torch backend runs: cpu, cuda, cuda:N, mps; NumPy and "
                   "the reference run on the CPU (default: cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="the backends' dtype; NumPy, having no bfloat16, computes in float32 then (default: float32)")
    p.add_argument("--reference", default=None,
                   help="numpy-float64, torch (the torch backend in float64), transformers (GPT2LMHeadModel in "
                        "float64, needs transformers; adds a third column, the NumPy backend in float64 against it "
                        "with the float64 tolerances), or the path of a trace file written by --save-trace "
                        "(default: numpy-float64; with --dtype float64, transformers, as the NumPy backend in "
                        "float64 would be compared with itself)")
    p.add_argument("--save-trace", "--save_trace", dest="save_trace", metavar="PATH",
                   help="write the reference's float64 activations and the prompt's ids to PATH (.safetensors; "
                        "layout in the README), for --reference PATH on another machine or implementation")
    p.add_argument("--atol", type=cli.number(float, 0), help="absolute tolerance (default: by dtype, below)")
    p.add_argument("--rtol", type=cli.number(float, 0),
                   help="tolerance per unit of max |reference| (default: by dtype, below)")
    p.add_argument("--greedy", type=cli.number(int, 0), default=0, metavar="N",
                   help="also decode N greedy tokens with every model and report where they first disagree")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the error per activation (needs matplotlib)")
    args = p.parse_args(argv)
    if args.reference is None:
        args.reference = "transformers" if args.dtype == "float64" else "numpy-float64"
    if args.reference == "numpy-float64" and args.dtype == "float64":
        p.error("--reference numpy-float64 with --dtype float64 compares the NumPy backend with itself; "
                "use --reference transformers or torch")
    if args.reference not in REFERENCES:
        if not Path(args.reference).is_file():
            p.error(f"--reference {args.reference}: neither {', '.join(REFERENCES)} nor a trace file")
        given = {"--start": args.start is not None, "--greedy": args.greedy > 0,
                 "--save-trace": args.save_trace is not None}
        for option in (option for option, is_given in given.items() if is_given):
            p.error(f"{option}: not with a trace file as --reference (it holds the prompt, and no model to decode)")
    args.start = DEFAULT_PROMPT if args.start is None else args.start
    if args.reference == "transformers" and importlib.util.find_spec("transformers") is None:
        p.error("--reference transformers needs the transformers package (pip install transformers)")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib (pip install matplotlib)")
    for option, path in (("--json", args.json), ("--plot", args.plot), ("--save-trace", args.save_trace)):
        if path and (problem := cli.output_path_problem(path)):  # say so now, not after a long comparison
            p.error(f"{option} {path}: {problem}")
    return args


def fail(message, status=2):
    cli.fail("compare.py", message, status)


def prompt_ids(text, config) -> np.ndarray:
    try:
        ids, note = tokenizer.encode_prompt(text, config.vocab_size, config.block_size)
    except tokenizer.TokenizerError as e:
        fail(e)
    if note:  # the prompt was cropped to block_size
        print(f"compare.py: {note}", file=sys.stderr)
    return np.array([ids])  # (1, T)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        text = cli.read_prompt(args.start)
    except ValueError as e:
        fail(e)
    try:
        reference = args.reference if args.reference in REFERENCES else TraceFile(args.reference)
        subjects, reference = load_subjects(args.init_from, args.dtype, args.device, reference)
    except (WeightsError, tokenizer.TokenizerError, ValueError, OSError, RuntimeError) as e:
        fail(e)
    config = subjects[0].model.config
    if isinstance(reference.model, TraceFile):
        if vars(reference.model.config) != vars(config):
            fail(f"{args.reference} traces another model: {vars(reference.model.config)}, the checkpoint's is "
                 f"{vars(config)}")
        idx = reference.model.prompt_ids
    else:
        idx = prompt_ids(text, config)
    if args.device.startswith("cuda"):
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False  # float32 products in float32 (see the module docstring)
        torch.backends.cudnn.allow_tf32 = False
    try:
        # NaN and infinities are reported in the table (first non-finite): NumPy's warnings would only add lines.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            report = compare(subjects, reference, idx, args.atol, args.rtol, args.greedy)
    except RuntimeError as e:  # torch's: CUDA out of memory, a device-side failure; the run failed, as in sample.py
        fail(e, status=1)
    except NonFiniteLogitsError as e:  # the reference's trace was finite, but its greedy decode went non-finite
        fail(f"the reference's greedy decode: {e}", status=1)
    report.meta = {"source": str(args.init_from), "dtype": args.dtype, "device": args.device,
                   "config": f"{config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd}, "
                             f"vocab {config.vocab_size}, block_size {config.block_size}"}  # fmt: skip
    with cli.writing_stdout():
        print_report(report)
        sys.stdout.flush()  # a full disk is reported here, as an error of the report, not at exit
    for path, write in ((args.json, write_json), (args.plot, write_plot), (args.save_trace, write_trace)):
        try:
            if path:
                write(report, path)
        except OSError as e:
            fail(f"cannot write {path}: {e.strerror or e}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    cli.run("compare.py", main)
