"""weights.load: every checkpoint format gives the same canonical parameters; every broken file a clear error.

The reference is transformers' own GPT2LMHeadModel. Its Conv1D layers store (in, out) matrices and compute
x @ W + b, the canonical orientation, so its state dict without the `transformer.` prefix and the tied
lm_head *is* the expected result (test_canonical_names_and_orientation checks that premise).
Comparisons of parameters are exact (np.array_equal): loading only renames, transposes and maps bytes, no
arithmetic touches a value, so any difference at all is a bug.
"""

import copy
import json
import mmap
import pickle
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import weights
from conftest import write_checkpoint
from weights import GPTConfig, WeightsError

REPO_ROOT = Path(__file__).resolve().parent.parent
N_LAYER, N_HEAD, N_EMBD, VOCAB_SIZE, BLOCK_SIZE = 2, 2, 16, 96, 24
CONFIG = GPTConfig(block_size=BLOCK_SIZE, vocab_size=VOCAB_SIZE, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD)
LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A tiny checkpoint as transformers writes it: config.json + model.safetensors."""
    return write_checkpoint(tmp_path_factory.mktemp("hf"), N_LAYER, N_HEAD, N_EMBD, VOCAB_SIZE, BLOCK_SIZE, seed=3)


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def expected(hf_model) -> dict[str, np.ndarray]:
    """The canonical parameters: transformers' state dict without the `transformer.` prefix and the tied head."""
    state = hf_model.state_dict()
    return {
        key.removeprefix("transformer."): value.numpy()
        for key, value in state.items()
        if key != "lm_head.weight" and not key.endswith((".attn.bias", ".attn.masked_bias"))  # mask buffers
    }


def assert_same_parameters(params, expected):
    assert sorted(params) == sorted(expected)
    for name, value in expected.items():
        assert params[name].dtype == np.float32, name
        assert np.array_equal(params[name], value), name


def assert_load_error(source, *fragments) -> str:
    """weights.load(source) raises a one-line WeightsError containing every fragment (the file, the problem)."""
    with pytest.raises(WeightsError) as info:
        weights.load(source)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def test_canonical_names_and_orientation(hf_dir, hf_model):
    config, params = weights.load(hf_dir)
    assert config == CONFIG
    assert {name: value.shape for name, value in params.items()} == weights.parameter_shapes(CONFIG)
    # (in, out): every linear layer of transformers' model computes x @ W + b with the loaded W and b. The
    # square attn.c_proj is the case a transposition would survive the shape checks in; here it cannot.
    block = hf_model.transformer.h[1]
    layers = {"attn.c_attn": block.attn.c_attn, "attn.c_proj": block.attn.c_proj,
              "mlp.c_fc": block.mlp.c_fc, "mlp.c_proj": block.mlp.c_proj}  # fmt: skip
    rng = np.random.default_rng(0)
    for name, layer in layers.items():
        W, b = params[f"h.1.{name}.weight"], params[f"h.1.{name}.bias"]
        x = rng.standard_normal((3, W.shape[0]))
        with torch.no_grad():
            y = copy.deepcopy(layer).double()(torch.from_numpy(x)).numpy()
        # float64 on both sides from the same float32 weights: only the summation order differs (~1e-16 relative)
        np.testing.assert_allclose(x @ W + b, y, rtol=0, atol=1e-12, err_msg=name)


# --- every format, the same parameters ---------------------------------------------------------------

def _mask_buffers(prefix: str, dtype=torch.bool) -> dict[str, torch.Tensor]:
    """The causal-mask buffers older transformers (and the hub's gpt2 files) store: attn.bias, attn.masked_bias."""
    tril = torch.tril(torch.ones(1, 1, BLOCK_SIZE, BLOCK_SIZE)).to(dtype)
    buffers = {}
    for i in range(N_LAYER):
        buffers[f"{prefix}h.{i}.attn.bias"] = tril
        buffers[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return buffers


def _hf_directory_bin(hf_dir, hf_model, tmp_path, prefixed: bool) -> Path:
    """pytorch_model.bin as transformers < 5 wrote it (transformers 5 writes safetensors only, whatever it is asked):
    torch.save of the state dict. With prefix: GPT2LMHeadModel's keys and tied lm_head; without: GPT2Model's keys,
    as in the hub's openai-community/gpt2 pytorch_model.bin. Both carry the mask buffers."""
    directory = tmp_path / "bin"
    directory.mkdir()
    shutil.copy(hf_dir / "config.json", directory)
    state = dict(hf_model.state_dict())
    if not prefixed:
        state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    state.update(_mask_buffers("transformer." if prefixed else ""))
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def _hub_layout_safetensors(hf_dir, hf_model, tmp_path) -> Path:
    """A model.safetensors like the hub's gpt2 one: keys without `transformer.`, float32 mask buffers kept."""
    directory = tmp_path / "hub-layout"
    directory.mkdir()
    shutil.copy(hf_dir / "config.json", directory)
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    state.update(_mask_buffers("", dtype=torch.float32))
    save_file({k: v.numpy() for k, v in state.items()}, str(directory / "model.safetensors"))
    return directory


def _sharded(hf_dir, hf_model, tmp_path) -> Path:
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="8KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()  # it did shard
    return tmp_path / "sharded"


def nanogpt_state_dict(hf_state, bias=True, prefix="_orig_mod."):
    """nanoGPT's GPT.state_dict() for the same weights: nn.Linear (out, in) matrices, the lm_head tied to wte
    (the same tensor), the causal-mask buffer `attn.bias` (registered when flash attention is unavailable), and
    `_orig_mod.` on every key when the model was torch.compile'd, which train.py saves as it is."""
    state = {}
    for key, value in hf_state.items():
        if key == "lm_head.weight" or (not bias and key.endswith(".bias")):
            continue
        if key.endswith(LINEAR_WEIGHTS):
            value = value.t().contiguous()  # Conv1D (in, out) -> nn.Linear (out, in)
        state[prefix + key] = value
    state[prefix + "lm_head.weight"] = state[prefix + "transformer.wte.weight"]
    mask = torch.tril(torch.ones(BLOCK_SIZE, BLOCK_SIZE)).view(1, 1, BLOCK_SIZE, BLOCK_SIZE)
    for i in range(N_LAYER):
        state[f"{prefix}transformer.h.{i}.attn.bias"] = mask
    return state


def write_nanogpt_checkpoint(path: Path, hf_state, bias=True, prefix="_orig_mod.", **extra) -> Path:
    """ckpt.pt exactly as nanoGPT's train.py saves it: model_args, model, optimizer, iter_num, best_val_loss, config."""
    model = nanogpt_state_dict(hf_state, bias, prefix)
    matrices = [torch.nn.Parameter(v.clone()) for k, v in model.items() if v.dim() == 2]
    vectors = [torch.nn.Parameter(v.clone()) for k, v in model.items() if v.dim() == 1]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                                  lr=6e-4, betas=(0.9, 0.95))  # fmt: skip
    for p in matrices + vectors:
        p.grad = torch.ones_like(p)
    optimizer.step()  # so that its state holds step, exp_avg and exp_avg_sq tensors, as a real checkpoint's does
    checkpoint = {
        "model": model,
        "optimizer": optimizer.state_dict(),
        "model_args": dict(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, block_size=BLOCK_SIZE, bias=bias,
                           vocab_size=VOCAB_SIZE, dropout=0.0),
        "iter_num": 5000,
        "best_val_loss": torch.tensor(2.85),
        "config": {"out_dir": "out", "dataset": "openwebtext", "learning_rate": 6e-4, "compile": True,
                   "dtype": "bfloat16", "wandb_log": False, "max_iters": 600000},
        **extra,
    }  # fmt: skip
    torch.save(checkpoint, path)
    return path


FORMATS = {
    "hf-dir-safetensors": lambda hf_dir, model, tmp: hf_dir,
    "hf-dir-sharded-safetensors": _sharded,
    "hf-dir-bin-prefixed": lambda hf_dir, model, tmp: _hf_directory_bin(hf_dir, model, tmp, prefixed=True),
    "hf-dir-bin-unprefixed": lambda hf_dir, model, tmp: _hf_directory_bin(hf_dir, model, tmp, prefixed=False),
    "hf-dir-hub-layout-safetensors": _hub_layout_safetensors,
    "safetensors-beside-config-json": lambda hf_dir, model, tmp: hf_dir / "model.safetensors",
    "nanogpt-compiled": lambda hf_dir, model, tmp: write_nanogpt_checkpoint(tmp / "ckpt.pt", model.state_dict()),
    "nanogpt-uncompiled":
        lambda hf_dir, model, tmp: write_nanogpt_checkpoint(tmp / "ckpt.pt", model.state_dict(), prefix=""),
}  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_parameters(fmt, hf_dir, hf_model, expected, tmp_path):
    config, params = weights.load(FORMATS[fmt](hf_dir, hf_model, tmp_path))
    assert config == CONFIG
    assert_same_parameters(params, expected)


def test_nanogpt_checkpoint_without_bias(hf_model, expected, tmp_path):
    """bias=False: no Linear or LayerNorm biases, and attn.bias is the mask buffer, not a parameter."""
    config, params = weights.load(write_nanogpt_checkpoint(tmp_path / "ckpt.pt", hf_model.state_dict(), bias=False))
    assert config == GPTConfig(BLOCK_SIZE, VOCAB_SIZE, N_LAYER, N_HEAD, N_EMBD, bias=False)
    assert_same_parameters(params, {k: v for k, v in expected.items() if not k.endswith(".bias")})


@pytest.mark.parametrize("fmt", ["safetensors (BF16)", "nanoGPT ckpt.pt (torch.bfloat16)"])
def test_bfloat16_checkpoints_load_as_float32_holding_the_same_values(fmt, hf_model, expected, tmp_path):
    """A bfloat16 checkpoint (transformers' save_pretrained of a bfloat16 model; nanoGPT's ckpt.pt of one) loads as
    float32 arrays holding exactly the bfloat16 values: bfloat16 is the top half of a float32, so the widening
    is exact and the comparison is equality, against torch's own bfloat16 -> float32."""
    model = copy.deepcopy(hf_model).to(torch.bfloat16)
    if fmt.startswith("safetensors"):
        model.save_pretrained(tmp_path / "bf16")
        header = (tmp_path / "bf16" / "model.safetensors").read_bytes()[:4000].decode("latin-1")
        assert '"BF16"' in header  # the premise: transformers wrote bfloat16 tensors
        source = tmp_path / "bf16"
    else:
        source = write_nanogpt_checkpoint(tmp_path / "ckpt.pt", model.state_dict())
    config, params = weights.load(source)
    assert config == CONFIG
    state = model.state_dict()
    assert_same_parameters(params, {name: state["transformer." + name].float().numpy() for name in expected})


def test_a_nan_in_a_tied_wte_loads_as_it_is(hf_model, tmp_path):
    """nanoGPT saves lm_head.weight beside wte.weight, the same tensor: a NaN in it is in both, which is still a
    tied lm_head (not "lm_head differs from wte"): it loads, and sampling refuses the non-finite logits with its
    own error (test_hostile_inputs)."""
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    state["transformer.wte.weight"][3, 5] = float("nan")
    config, params = weights.load(write_nanogpt_checkpoint(tmp_path / "ckpt.pt", state))
    assert np.isnan(params["wte.weight"][3, 5]) and np.isnan(params["wte.weight"]).sum() == 1


def test_safetensors_written_by_save_records_its_config(expected, tmp_path):
    config = GPTConfig(BLOCK_SIZE, VOCAB_SIZE, N_LAYER, N_HEAD, N_EMBD, dropout=0.1)  # not the default: it is read back
    weights.save(tmp_path / "gpt.safetensors", config, expected)  # nothing beside it: the config is in the file
    loaded_config, params = weights.load(tmp_path / "gpt.safetensors")
    assert loaded_config == config
    assert_same_parameters(params, expected)


@pytest.mark.parametrize("bias", [True, False])
def test_bare_safetensors_takes_n_head_from_the_matching_preset(bias, expected, tmp_path, monkeypatch):
    """A bare file fixes everything but n_head by its shapes; n_head comes from the one preset of that n_layer and
    n_embd. The real presets are 124M+ parameters, so a tiny one is added for the test."""
    monkeypatch.setitem(weights.PRESETS, "tiny-test", dict(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD))
    tensors = {k: v for k, v in expected.items() if bias or not k.endswith(".bias")}
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    config, params = weights.load(tmp_path / "bare.safetensors")
    assert config == GPTConfig(BLOCK_SIZE, VOCAB_SIZE, N_LAYER, N_HEAD, N_EMBD, bias=bias)
    assert_same_parameters(params, tensors)


def test_bare_safetensors_matching_no_preset_is_refused(expected, tmp_path):
    save_file(expected, str(tmp_path / "bare.safetensors"))
    assert_load_error(tmp_path / "bare.safetensors", tmp_path / "bare.safetensors", "n_head cannot be inferred",
                      f"n_layer={N_LAYER}", f"n_embd={N_EMBD}", "config.json")


def _memmap_behind(array):
    while array is not None and not isinstance(array, np.memmap):
        array = array.base
    return array


@pytest.mark.parametrize("single_file", [False, True])
def test_safetensors_are_memory_mapped_not_copied(single_file, hf_dir):
    file = hf_dir / "model.safetensors"
    _, params = weights.load(file if single_file else hf_dir)
    for name, array in params.items():
        mapped = _memmap_behind(array)
        assert mapped is not None and Path(mapped.filename).samefile(file), name
        assert np.shares_memory(array, mapped) and not array.flags.owndata and not array.flags.writeable, name


def _resident_mapped_kib():
    with open("/proc/self/status") as f:  # pages of mapped files in this process's resident set (tmpfs: Shmem)
        fields = {line.split(":")[0]: int(line.split()[1])
                  for line in f if line.startswith(("RssFile:", "RssShmem:"))}
    return fields["RssFile"] + fields["RssShmem"]


def _present_pages(address: int, n: int) -> list[bool]:
    """Whether each of the n pages from address is in this process's resident set (bit 63 of its entry in
    /proc/self/pagemap, which a process may read for itself)."""
    page = mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(address // page * 8)
        entries = f.read(8 * n)
    return [bool(int.from_bytes(entries[i:i + 8], "little") >> 63) for i in range(0, 8 * n, 8)]


@pytest.mark.skipif(sys.platform != "linux", reason="reads the resident set from Linux's /proc")
def test_release_pages_drops_exactly_a_mapped_arrays_pages_and_keeps_its_values(tmp_path):
    """A backend that copies a weight into another layout releases the file's pages of it. Released: every
    whole page inside the array (a middle slice of a 64 MiB tensor here), and not the pages a few MiB
    around it, nor the next tensor's; the process's mapped resident set shrinks by at least 90% of the slice
    (far above the noise of other mappings); reading the array again faults its pages back with the same
    values. A strided view, or an array with no memory map behind it, is left alone."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal((4096, 4096), dtype=np.float32)  # 64 MiB, 16 KiB a row
    small = rng.standard_normal((1000,), dtype=np.float32)
    save_file({"big": big, "small": small}, str(tmp_path / "t.safetensors"))
    _, arrays = weights.loader.read_safetensors(tmp_path / "t.safetensors")
    assert float(arrays["big"].sum(dtype=np.float64)) == float(big.sum(dtype=np.float64))  # every page touched
    assert float(arrays["small"].sum(dtype=np.float64)) == float(small.sum(dtype=np.float64))
    page = mmap.PAGESIZE
    middle = arrays["big"][1000:3000]  # 31.25 MiB, not page-aligned in the file (the header comes first)
    start = middle.__array_interface__["data"][0]
    first = -(-start // page) * page  # the first page wholly inside the slice
    n_inside = (start + middle.nbytes) // page - first // page
    before = _resident_mapped_kib()
    weights.release_pages(arrays["big"][::2])  # strided: left alone
    weights.release_pages(big)  # no file behind it: left alone
    assert all(_present_pages(first, n_inside))
    weights.release_pages(middle)
    after = _resident_mapped_kib()
    assert before - after >= 0.9 * middle.nbytes / 1024, (before, after)
    assert not any(_present_pages(first, n_inside))
    # The file's pages may be mapped as 2 MiB huge pages, which the kernel unmaps whole when a release ends
    # inside one: its neighbours beyond that stay resident.
    margin = 4 * 2**20
    assert _present_pages(first - margin, 1) == [True]
    assert _present_pages(first + n_inside * page + margin, 1) == [True]
    assert _present_pages(arrays["small"].__array_interface__["data"][0], 1) == [True]
    assert np.array_equal(arrays["big"], big) and np.array_equal(arrays["small"], small)


def test_loading_safetensors_does_not_import_torch(hf_dir):
    code = f"import sys, weights; weights.load({str(hf_dir)!r}); assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- pickles: weights only, never code ---------------------------------------------------------------

class CreatesAFile:
    """Unpickling this calls open(marker, "w"): if the marker file appears, a pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_the_marker_pickle_does_run_code_when_unpickled_naively(tmp_path):
    """The premise of the next test: this pickle really executes code under a plain pickle.load."""
    pickle.loads(pickle.dumps(CreatesAFile(tmp_path / "marker"))).close()
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("how", ["torch.save ckpt.pt", "pickle.dump ckpt.pt", "pytorch_model.bin"])
def test_a_pickle_that_would_run_code_is_refused_unexecuted(how, hf_dir, tmp_path):
    marker = tmp_path / "marker"
    model_args = dict(n_layer=1, n_head=1, n_embd=4, block_size=4, vocab_size=4)
    payload = {"model_args": model_args, "model": CreatesAFile(marker)}
    file = tmp_path / "ckpt.pt"
    if how == "torch.save ckpt.pt":  # torch's zip format
        torch.save(payload, file)
    elif how == "pickle.dump ckpt.pt":  # the legacy format, a bare pickle stream (protocol 2, which torch reads)
        file.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        shutil.copy(hf_dir / "config.json", tmp_path)
        file = tmp_path / "pytorch_model.bin"
        torch.save({"transformer.wte.weight": CreatesAFile(marker)}, file)
    assert_load_error(tmp_path if how == "pytorch_model.bin" else file, file, "weights_only=True")
    assert not marker.exists()


def test_a_checkpoint_holding_arbitrary_objects_is_refused(hf_model, tmp_path):
    path = write_nanogpt_checkpoint(tmp_path / "ckpt.pt", hf_model.state_dict(), extra_state={"ratio": Fraction(1, 3)})
    assert_load_error(path, path, "fractions.Fraction", "weights_only=True")


# --- broken files: one clear line naming the file and the problem --------------------------------------

@pytest.fixture
def model_dir(hf_dir, tmp_path) -> Path:
    """A copy of the tiny checkpoint directory, to break."""
    return Path(shutil.copytree(hf_dir, tmp_path / "model"))


def edit_config(directory: Path, **changes):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def edit_tensor(directory: Path, name: str, change):
    """Rewrite model.safetensors (with the safetensors library) with tensor `name` set to change(its value):
    change(None) when it is absent; a change returning None deletes it."""
    tensors = load_file(str(directory / "model.safetensors"))
    value = change(tensors.pop(name, None))
    if value is not None:
        tensors[name] = value
    save_file(tensors, str(directory / "model.safetensors"))


def header_length(file: Path) -> int:
    return int.from_bytes(file.read_bytes()[:8], "little")


def test_missing_path(tmp_path):
    assert_load_error(tmp_path / "absent.safetensors", tmp_path / "absent.safetensors", "no such file")
    assert_load_error(tmp_path / "absent" / "ckpt.pt", tmp_path / "absent" / "ckpt.pt", "no such file")


def test_unknown_model_name():
    assert_load_error("gpt3", "unknown model name 'gpt3'", "gpt2-medium", "give its path")


def test_directory_without_config_json(model_dir):
    (model_dir / "config.json").unlink()
    assert_load_error(model_dir, model_dir, "no config.json")


def test_directory_without_weights(model_dir):
    (model_dir / "model.safetensors").unlink()
    assert_load_error(model_dir, model_dir, "neither model.safetensors nor pytorch_model.bin")


def test_unreadable_config_json(model_dir):
    (model_dir / "config.json").write_text('{"n_layer": 2,')
    assert_load_error(model_dir, model_dir / "config.json", "unreadable JSON")


@pytest.mark.parametrize("where", ["in the length", "in the header", "in the data"])
def test_truncated_safetensors(where, model_dir):
    file = model_dir / "model.safetensors"
    data = file.read_bytes()
    cut = {"in the length": 5, "in the header": 8 + header_length(file) // 2, "in the data": len(data) - 1}[where]
    file.write_bytes(data[:cut])
    assert_load_error(model_dir, file, "truncated")


def test_safetensors_with_garbage_in_its_header(model_dir):
    file = model_dir / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8 + 20 : 8 + 60] = b"\xff" * 40  # invalid UTF-8 in the middle of the JSON header
    file.write_bytes(bytes(data))
    assert_load_error(model_dir, file, "corrupted safetensors header")


def test_safetensors_that_is_garbage(model_dir):
    file = model_dir / "model.safetensors"
    file.write_bytes(np.random.default_rng(0).bytes(4096))  # its first 8 bytes announce an absurd header length
    assert_load_error(model_dir, file, "not a safetensors file")


BAD_HEADER_ENTRIES = {
    "unknown dtype": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]},
    "offsets not integers": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]},
    "negative dimension": {"dtype": "F32", "shape": [-2, -1], "data_offsets": [0, 8]},
    "begin after end": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]},
    "shape too big for its bytes": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
    "not an object": [0, 8],
}


@pytest.mark.parametrize("problem", BAD_HEADER_ENTRIES)
def test_safetensors_header_entry_that_makes_no_sense(problem, tmp_path):
    header = json.dumps({"wte.weight": BAD_HEADER_ENTRIES[problem]}).encode()
    file = tmp_path / "bad.safetensors"
    file.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    assert_load_error(file, file, "corrupted", "'wte.weight'")


def test_missing_tensor_is_named(model_dir):
    edit_tensor(model_dir, "transformer.h.1.mlp.c_fc.bias", lambda bias: None)
    assert_load_error(model_dir, model_dir, "missing tensors: h.1.mlp.c_fc.bias")


def test_unexpected_tensor_is_named(model_dir):
    edit_tensor(model_dir, "transformer.h.0.mlp.c_gate.weight", lambda absent: np.zeros((N_EMBD, 4), np.float32))
    assert_load_error(model_dir, model_dir, "unexpected tensors: h.0.mlp.c_gate.weight")


def test_tensor_of_the_wrong_shape(model_dir):
    edit_tensor(model_dir, "transformer.h.0.mlp.c_fc.bias", lambda bias: bias[:-1])
    assert_load_error(model_dir, model_dir, "'h.0.mlp.c_fc.bias'", f"({4 * N_EMBD - 1},)", f"({4 * N_EMBD},)")


def test_linear_orientation_in_a_conv1d_file_is_caught(model_dir):
    """An HF file holding nn.Linear's (out, in) c_attn: the shapes contradict the config, nothing is loaded."""
    edit_tensor(model_dir, "transformer.h.0.attn.c_attn.weight", lambda weight: weight.T.copy())
    C = N_EMBD
    assert_load_error(model_dir, model_dir, "'h.0.attn.c_attn.weight'", f"({3 * C}, {C})", f"({C}, {3 * C})")


@pytest.mark.parametrize("n_layer", [N_LAYER + 2, N_LAYER - 1])
def test_config_and_file_disagree_on_the_number_of_layers(n_layer, model_dir):
    edit_config(model_dir, n_layer=n_layer)
    assert_load_error(model_dir, model_dir, f"n_layer={n_layer}", f"{N_LAYER} blocks")


def test_lm_head_not_tied_to_wte(model_dir):
    wte = load_file(str(model_dir / "model.safetensors"))["transformer.wte.weight"]
    edit_tensor(model_dir, "lm_head.weight", lambda absent: wte + 1)
    assert_load_error(model_dir, model_dir, "lm_head.weight differs from wte.weight")


def test_unsupported_activation_function(model_dir):
    edit_config(model_dir, activation_function="relu")
    assert_load_error(model_dir, model_dir / "config.json", "activation_function='relu'", "gelu_new")


def test_sharded_directory_missing_a_shard(hf_model, tmp_path):
    directory = _sharded(None, hf_model, tmp_path)
    shard = sorted(directory.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert_load_error(directory, shard, "No such file")


@pytest.mark.parametrize("damage, problem", [("truncated", "corrupted or truncated"), ("empty", "not a checkpoint")])
def test_broken_torch_pickles(damage, problem, hf_model, tmp_path):
    """Half a zip archive is still torch's (its first bytes say so) and is reported as damaged; an empty file
    has no first bytes, so it is no checkpoint of any kind."""
    path = write_nanogpt_checkpoint(tmp_path / "ckpt.pt", hf_model.state_dict())
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b""}[damage])
    assert_load_error(path, path, problem)


NOT_A_CHECKPOINT = "not a checkpoint (expected a Hugging Face directory, a .safetensors file, or a torch checkpoint"


@pytest.mark.parametrize("name", ["config.json", "ckpt.pt", "notes.txt"])
def test_a_file_of_no_checkpoint_format_is_named_so(name, hf_dir, tmp_path):
    """A config.json given as the checkpoint (or text named ckpt.pt) is neither a zip nor a pickle: it is not
    handed to torch.load, whose "Unsupported operand 123" would blame a malicious pickle."""
    path = tmp_path / name
    path.write_bytes((hf_dir / "config.json").read_bytes())
    message = assert_load_error(path, path, NOT_A_CHECKPOINT)
    assert "pickle" not in message


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_torch_checkpoints_are_recognised_by_their_first_bytes_not_their_name(legacy, hf_model, expected, tmp_path):
    """torch.save's zip format (PK\\x03\\x04) and its pre-1.6 pickle stream (0x80) load whatever the file is called."""
    path = tmp_path / "weights.ckpt"
    model_args = dict(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, block_size=BLOCK_SIZE, vocab_size=VOCAB_SIZE)
    checkpoint = {"model": nanogpt_state_dict(hf_model.state_dict()), "model_args": model_args}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    assert path.read_bytes()[:4].startswith(b"\x80" if legacy else b"PK\x03\x04")  # the premise
    config, params = weights.load(path)
    assert config == CONFIG
    assert_same_parameters(params, expected)


@pytest.mark.parametrize("signature", [b"PK\x03\x04", b"\x80"])  # torch's zip format, its legacy pickle stream
def test_random_bytes_as_a_torch_pickle(tmp_path, signature):
    """Garbage behind a torch signature reaches torch's readers, which fail on it in many ways (UnpicklingError,
    EOFError, IndexError, zip errors, ...): each must become a one-line WeightsError, not a traceback."""
    path = tmp_path / "ckpt.pt"
    for seed in range(24):
        path.write_bytes(signature + np.random.default_rng(seed).bytes(2000))
        message = assert_load_error(path, path)
        assert "corrupted or truncated" in message or "a pickle that is corrupt" in message, message


def test_corrupt_pytorch_model_bin(model_dir):
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + bytes(100))  # a zip signature, then nothing
    assert_load_error(model_dir, model_dir / "pytorch_model.bin", "corrupted or truncated")


def test_sample_cli_reports_a_broken_checkpoint_in_one_line(model_dir):
    file = model_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-1])
    result = subprocess.run(
        [sys.executable, "sample.py", "--backend", "numpy", "--init-from", str(model_dir), "--max_new_tokens", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2  # bad input
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert str(file) in result.stderr and "truncated" in result.stderr, result.stderr
