"""weights.load(source) -> (GPTConfig, params): the one loader both backends share.

It is framework-neutral: it returns NumPy arrays, and imports torch only to read a torch pickle.

Canonical parameter names and orientation, defined here and nowhere else:

    wte.weight                (vocab_size, n_embd)     token embeddings, also the (tied) lm_head
    wpe.weight                (block_size, n_embd)     position embeddings
    h.{i}.ln_1.weight, .bias  (n_embd,)
    h.{i}.attn.c_attn.weight  (n_embd, 3 * n_embd)     x @ W + b gives q, k, v side by side
    h.{i}.attn.c_attn.bias    (3 * n_embd,)
    h.{i}.attn.c_proj.weight  (n_embd, n_embd)
    h.{i}.attn.c_proj.bias    (n_embd,)
    h.{i}.ln_2.weight, .bias  (n_embd,)
    h.{i}.mlp.c_fc.weight     (n_embd, 4 * n_embd)
    h.{i}.mlp.c_fc.bias       (4 * n_embd,)
    h.{i}.mlp.c_proj.weight   (4 * n_embd, n_embd)
    h.{i}.mlp.c_proj.bias     (n_embd,)
    ln_f.weight, .bias        (n_embd,)

Matrices are (in, out), so that a layer is `x @ W + b`. That is GPT-2's own layout (OpenAI's
TensorFlow code, and Hugging Face's Conv1D after it), so the hub's safetensors are used as they lie
on disk: memory-mapped, never copied by the loader (each backend then copies what its products read
faster in another layout: see gpt2_numpy.product_layout and gpt2_torch's from_pretrained).
torch.nn.Linear stores (out, in): nanoGPT checkpoints are transposed here, and the torch backend
transposes when it builds its Linear layers.
A model with bias=False has no `.bias` entries. The lm_head is tied to wte and has no entry.

Every failure is a WeightsError with a one-line message, OSErrors included (permission denied, a symlink
loop, a path through a file), and a path that is neither a regular file nor a directory (a FIFO, a device)
is refused before anything opens it. Config fields are checked for type and range (GPTConfig), and the
config's sizes against the file's tensors before anything proportional to them is built.

The loader does not check that every weight is finite. Such a pass costs 0.034 s over GPT-2 124M's
0.5 GB of float32 and 0.45 s over XL's 6.2 GB (np.isfinite(...).all() per tensor, in memory, on this
project's 2-core machine; a memory-mapped file not yet in the page cache adds reading all of it from
disk at load, which the first forward pass would otherwise spread out), paid at every load. And it would
catch only half of the problem: weights that are finite but overflow a narrow dtype (float16 stops at
65504) make NaN logits too. The sampler checks every step's logits instead (weights.sampling.check_finite,
about 12 us a step), which catches both, and compare.py names the first activation that went non-finite.
"""

import json
import math
import mmap
import os
import re
import stat
from pathlib import Path

import numpy as np

from .config import PRESETS, GPTConfig
from . import files
from .errors import WeightsError
from .hub import HUB_REPOS, download

# Linear layers: the only parameters whose orientation differs between nn.Linear and Conv1D.
MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Entries that checkpoints carry but that are not parameters: the causal-mask buffers and the tied head.
_DROPPED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$|^lm_head\.weight$")
_PREFIXES = ("_orig_mod.", "module.", "transformer.")  # torch.compile, DataParallel, Hugging Face
# config.json and model.safetensors.index.json are read whole: a sharded index of thousands of tensors is well
# under 1 MiB, and this bound keeps a huge or endless file from being read into memory.
JSON_LIMIT = 16 * 2**20
# The safetensors library's own bound on a file's JSON header (its MAX_HEADER_SIZE, 100 MB).
SAFETENSORS_HEADER_LIMIT = 100_000_000


def parameter_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter name with its shape, in the order of the forward pass."""
    C = config.n_embd
    shapes = {"wte.weight": (config.vocab_size, C), "wpe.weight": (config.block_size, C)}
    layers = {
        "ln_1": (C,), "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C),
        "ln_2": (C,), "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C),
    }  # fmt: skip
    for i in range(config.n_layer):
        for name, shape in layers.items():
            shapes[f"h.{i}.{name}.weight"] = shape
            if config.bias:
                shapes[f"h.{i}.{name}.bias"] = shape[-1:]
    shapes["ln_f.weight"] = (C,)
    if config.bias:
        shapes["ln_f.bias"] = (C,)
    return shapes


def parameter_count(config: GPTConfig) -> int:
    """How many weights a GPT-2 of config has (the tied lm_head counted once, as wte)."""
    return sum(math.prod(shape) for shape in parameter_shapes(config).values())


def stored_out_in(name: str, shape: tuple[int, ...]) -> bool | None:
    """Whether a product reads the weight name, of canonical shape, fastest stored (out, in) in memory rather
    than (in, out); None for a parameter no product multiplies. Decoding multiplies each weight by a row or a
    few, and both MKL and OpenBLAS read a weight fastest with its longer side contiguous, a square one
    (out, in) (measured on GPT-2's matrices, BENCHMARKS.md). The matrices are (in, out); wte is (out, in) as
    the tied lm_head multiplies it (out = vocab_size)."""
    if name == "wte.weight":
        n_out, n_in = shape
    elif name.endswith(MATRICES):
        n_in, n_out = shape
    else:
        return None
    return n_out <= n_in


def load(source: str | os.PathLike) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """Load a GPT-2 checkpoint from any supported source.

    source is one of
      - a model name: gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 (through the Hugging Face hub cache);
      - a Hugging Face directory: config.json + model.safetensors (or sharded, or pytorch_model.bin);
      - a single .safetensors file (config from its metadata, a config.json beside it, or its shapes);
      - a nanoGPT checkpoint ckpt.pt (model_args + model).
    Returns the config and the parameters by canonical name (see the module docstring).
    Raises WeightsError with a one-line message for every failure.
    """
    path = Path(source)
    try:
        mode = os.stat(path).st_mode  # follows symbolic links, as opening would
    except FileNotFoundError:
        if str(source) in HUB_REPOS:
            path, mode = download(str(source)), stat.S_IFDIR
        elif os.sep in str(source) or path.suffix:
            raise WeightsError(f"{source}: no such file or directory") from None
        else:
            raise WeightsError(
                f"unknown model name '{source}' (known: {', '.join(HUB_REPOS)}); "
                "to load a local checkpoint, give its path"
            ) from None
    except OSError as e:  # permission denied on a directory above it, a symlink loop, a path through a file
        raise WeightsError(f"{source}: {e.strerror}") from None
    try:
        if stat.S_ISDIR(mode):
            config, params = _read_hf_directory(path)
        elif not stat.S_ISREG(mode):  # opening a FIFO would wait for a writer; a device is no checkpoint
            raise WeightsError(f"{path}: {files.kind(mode)}, not a checkpoint file or directory")
        elif path.suffix == ".safetensors":
            config, params = _read_single_safetensors(path)
        elif _is_torch_file(path):
            config, params = _read_torch_checkpoint(path)
        else:
            raise WeightsError(f"{path}: not a checkpoint (expected a Hugging Face directory, a .safetensors file, "
                               "or a torch checkpoint such as nanoGPT's ckpt.pt)")
    except OSError as e:  # whatever the readers above did not name more precisely: still one line
        raise WeightsError(f"{e.filename or path}: {e.strerror or e}") from None
    _check(config, params, path)
    return config, params


def save(path: str | os.PathLike, config: GPTConfig, params: dict[str, np.ndarray]) -> None:
    """Write params as a .safetensors file that records its GPTConfig, so `load` needs nothing beside it."""
    from safetensors.numpy import save_file

    meta = {"gpt_config": json.dumps(vars(config))}
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(path), metadata=meta)


# --- Hugging Face directories and safetensors ------------------------------------------------------

def _read_hf_directory(path: Path):
    config_file = path / "config.json"
    if not config_file.is_file():
        raise WeightsError(f"{path}: no config.json in this directory (expected a Hugging Face model directory)")
    config = _config_from_hf(_read_json(config_file), config_file)
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        _, tensors = read_safetensors(path / "model.safetensors")
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")  # tensor name -> shard file
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: no weight_map")
        tensors, shard_of = {}, {}
        for shard in sorted(set(map(str, weight_map.values()))):
            for name, tensor in read_safetensors(path / shard)[1].items():
                if name in tensors:  # not silently the last shard's
                    raise WeightsError(f"{path}: tensor '{name}' is in both {shard_of[name]} and {shard}")
                tensors[name], shard_of[name] = tensor, shard
    elif (path / "pytorch_model.bin").is_file():
        tensors = _read_torch_pickle(path / "pytorch_model.bin")
    else:
        raise WeightsError(f"{path}: neither model.safetensors nor pytorch_model.bin in this directory")
    return config, _canonical(tensors, path)


def _read_single_safetensors(path: Path):
    metadata, tensors = read_safetensors(path)
    params = _canonical(tensors, path)
    if "gpt_config" in metadata:
        try:
            config = GPTConfig(**json.loads(metadata["gpt_config"]))
        except (ValueError, TypeError, RecursionError) as e:
            raise WeightsError(f"{path}: bad gpt_config in the file's metadata: {e}") from None
    elif (path.parent / "config.json").is_file():
        config = _config_from_hf(_read_json(path.parent / "config.json"), path.parent / "config.json")
    else:
        config = _config_from_shapes(params, path)
    return config, params


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip
# The format's other dtypes: valid files, but no GPT-2 parameter comes in them and NumPy has no float8.
_UNSUPPORTED_SAFETENSORS_DTYPES = {"F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F6_E2M3", "F6_E3M2",
                                   "F4", "U16", "U32", "U64", "C64"}  # fmt: skip


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Read a .safetensors file memory-mapped: the arrays are read-only views of the file, not copies.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte range, then the raw data. bfloat16 tensors (which NumPy lacks) become float32 copies.
    """
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # a shard named by an index may be anything
            raise WeightsError(f"{path}: {files.kind(status.st_mode)}, not a safetensors file")
        size = status.st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise WeightsError(f"{path}: not a safetensors file, or truncated (header length {n}, file size {size})")
            if n > SAFETENSORS_HEADER_LIMIT:
                raise WeightsError(f"{path}: not a safetensors file (header length {n}, the format's limit is "
                                   f"{SAFETENSORS_HEADER_LIMIT})")
            header = f.read(n)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the file ({e.strerror})") from None
    try:
        header = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deeply
        raise WeightsError(f"{path}: corrupted safetensors header ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__") or {}, dict):
        raise WeightsError(f"{path}: corrupted safetensors header (not a JSON object of tensor entries)")
    metadata = header.pop("__metadata__", None) or {}
    data = np.memmap(path, dtype=np.uint8, mode="r")  # the whole file; the tensors are views into it
    return metadata, {name: _tensor_view(data, name, info, 8 + n, path) for name, info in header.items()}


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set, once a backend holds a copy
    of it (in another layout or dtype) and will not read it again. The pages stay in the operating system's
    file cache, so reading the array later costs a page fault, not a disk read; without this, a copied array
    would count twice in the process's memory for as long as the file stays mapped for the other arrays.
    An array that is no view of a memory-mapped file (a bfloat16 tensor converted at load, a torch pickle's),
    or a platform without madvise, is left as it is."""
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        return  # a strided view: its bytes are not one range of the file
    mapping = array  # up to the array made on the mmap.mmap itself (a slice of an np.memmap is one too)
    while isinstance(mapping, np.ndarray) and not isinstance(mapping.base, mmap.mmap):
        mapping = mapping.base
    if not isinstance(mapping, np.memmap) or mapping.offset != 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return  # not a view of a file mapped from its first byte, or no madvise on this platform
    mm = mapping.base
    page = mmap.PAGESIZE
    begin = array.__array_interface__["data"][0] - mapping.__array_interface__["data"][0]  # bytes into the file
    first, last = -(-begin // page) * page, (begin + array.nbytes) // page * page  # whole pages inside the array
    if last > first:
        mm.madvise(mmap.MADV_DONTNEED, first, last - first)


def _tensor_view(data: np.memmap, name: str, info, data_start: int, path: Path) -> np.ndarray:
    """One tensor of a safetensors file, from its header entry {dtype, shape, data_offsets}, without a copy."""
    if isinstance(info, dict) and info.get("dtype") in _UNSUPPORTED_SAFETENSORS_DTYPES:
        raise WeightsError(f"{path}: tensor '{name}' is {info['dtype']}, which this loader does not read "
                           "(F16, BF16, F32 and F64 are)")
    try:
        dtype, shape, (begin, end) = _SAFETENSORS_DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        valid = all(type(v) is int and v >= 0 for v in (*shape, begin, end)) and begin <= end
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise WeightsError(f"{path}: corrupted safetensors header entry for '{name}': {info}")
    if data_start + end > data.size:
        raise WeightsError(f"{path}: truncated: tensor '{name}' ends at byte {data_start + end}, the file has {data.size}")
    count = math.prod(shape)
    if count * np.dtype(dtype).itemsize != end - begin:
        raise WeightsError(f"{path}: corrupted: tensor '{name}' of shape {shape} does not fill its byte range")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=data_start + begin).reshape(shape)
    if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _read_json(path: Path) -> dict:
    try:
        data = files.read_regular_file(path, JSON_LIMIT, "the JSON file")
    except ValueError as e:  # its message names the file and the problem
        raise WeightsError(str(e)) from None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors; [[[[...
        raise WeightsError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a JSON object, found a {type(obj).__name__}")
    return obj


def _config_from_hf(hf: dict, path: Path) -> GPTConfig:
    """GPTConfig from a Hugging Face GPT2Config, refusing the variants this architecture does not compute."""
    try:
        config = GPTConfig(
            block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
            n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True,
        )  # fmt: skip
    except KeyError as e:
        raise WeightsError(f"{path}: config.json lacks '{e.args[0]}'") from None
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path}: {e}") from None
    unsupported = {
        "model_type": (hf.get("model_type", "gpt2"), ("gpt2",)),
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "n_inner": (hf.get("n_inner"), (None, 4 * config.n_embd)),
        "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "tie_word_embeddings": (hf.get("tie_word_embeddings", True), (True,)),  # else transformers' head is not wte
    }
    for key, (value, allowed) in unsupported.items():
        # Of the allowed type too: 256.0 == 256 and 1 == True, but transformers refuses n_inner 256.0.
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise WeightsError(f"{path}: {key}={value!r} is not GPT-2's architecture (supported: {allowed})")
    return config


def _config_from_shapes(params: dict[str, np.ndarray], path: Path) -> GPTConfig:
    """Infer the config of a bare .safetensors file. Shapes fix everything but n_head, which must match a preset."""
    if "wte.weight" not in params or "wpe.weight" not in params:
        raise WeightsError(f"{path}: no wte.weight / wpe.weight, so the config cannot be inferred from the shapes")
    if params["wte.weight"].ndim != 2 or params["wpe.weight"].ndim != 2:
        raise WeightsError(f"{path}: wte.weight and wpe.weight must be matrices, so the config cannot be inferred")
    (vocab_size, n_embd), (block_size, _) = params["wte.weight"].shape, params["wpe.weight"].shape
    n_layer = len(_block_indices(params))
    n_heads = {p["n_head"] for p in PRESETS.values() if (p["n_layer"], p["n_embd"]) == (n_layer, n_embd)}
    if len(n_heads) != 1:
        raise WeightsError(
            f"{path}: n_head cannot be inferred from tensor shapes (n_layer={n_layer}, n_embd={n_embd} match no "
            "GPT-2 preset); put its config.json beside the file"
        )
    return GPTConfig(block_size, vocab_size, n_layer, n_heads.pop(), n_embd, bias="ln_f.bias" in params)


# --- torch pickles: pytorch_model.bin and nanoGPT's ckpt.pt ---------------------------------------

# The first bytes of torch.save's two formats: a zip archive (since torch 1.6), or before that a bare pickle
# stream, whose protocol 2+ opcode PROTO is 0x80. Anything else (a config.json, a text file) is not torch's.
_TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80")


def _is_torch_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4).startswith(_TORCH_SIGNATURES)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read the file ({e.strerror})") from None


def _read_torch_checkpoint(path: Path):
    obj = _read_torch_pickle(path, whole=True)
    if isinstance(obj, dict) and "model_args" in obj and "model" in obj:  # nanoGPT
        args = obj["model_args"]
        try:
            config = GPTConfig(**{k: args[k] for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")},
                               bias=args.get("bias", True), dropout=args.get("dropout", 0.0))
        except KeyError as e:
            raise WeightsError(f"{path}: nanoGPT model_args lacks {e}") from None
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{path}: bad nanoGPT model_args ({e})") from None
        params = _canonical(_to_numpy(obj["model"], path), path)
        for name in params:  # nn.Linear (out, in) -> canonical (in, out)
            if name.endswith(MATRICES):
                params[name] = np.ascontiguousarray(params[name].T)
        return config, params
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):  # a bare state dict in HF layout
        params = _canonical(_to_numpy(obj, path), path)
        if (path.parent / "config.json").is_file():
            return _config_from_hf(_read_json(path.parent / "config.json"), path.parent / "config.json"), params
        return _config_from_shapes(params, path), params
    raise WeightsError(f"{path}: not a GPT-2 checkpoint (expected nanoGPT's model_args + model, or a state dict)")


def _read_torch_pickle(path: Path, whole: bool = False):
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary code."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what matters
            warnings.simplefilter("ignore", UserWarning)
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # only the legacy (pre-zip) format cannot be memory-mapped
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused: a pickle that is corrupt or holds more than tensors ({_unpickling_reason(e)}); "
            "it is read with weights_only=True, which never runs the pickle's code"
        ) from None
    except Exception as e:  # garbage makes torch's readers fail in many ways: EOFError, IndexError, zip errors, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # torch appends advice
        raise WeightsError(f"{path}: not a readable checkpoint (corrupted or truncated?): {first}") from None
    return obj if whole else _to_numpy(obj, path)


def _unpickling_reason(error: Exception) -> str:
    """The informative sentence of torch's page-long weights_only error, e.g. 'Unsupported global: GLOBAL io.open'."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    reason = match.group(1) if match else (text.strip().splitlines() or [type(error).__name__])[0]
    return reason.split(". ")[0].strip()


def _to_numpy(state, path: Path) -> dict[str, np.ndarray]:
    import torch

    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    out = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise WeightsError(f"{path}: entry '{name}' is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        try:
            out[str(name)] = tensor.detach().numpy()
        except (TypeError, RuntimeError):  # float8, quantized or sparse tensors: NumPy cannot hold them
            raise WeightsError(f"{path}: tensor '{name}' is {tensor.dtype} ({tensor.layout}), which this loader "
                               "does not read (float16, bfloat16, float32 and float64 are)") from None
    return out


# --- naming and validation --------------------------------------------------------------------------

def _canonical(tensors: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Strip wrapper prefixes and drop the non-parameters; refuse an lm_head that is not tied to wte, and two
    keys that name the same parameter (wte.weight and transformer.wte.weight: which one would be meant?)."""
    params, head, key_of = {}, None, {}
    for key, value in tensors.items():
        name = key
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        if name in key_of:
            raise WeightsError(f"{path}: '{key_of[name]}' and '{key}' both name {name}; keep one of them")
        key_of[name] = key
        if name == "lm_head.weight":
            head = value
        elif not _DROPPED.search(name):
            params[name] = value
    # equal_nan: a NaN in a tied wte is in lm_head too, and is refused later with the error about non-finite weights
    if head is not None and "wte.weight" in params and not np.array_equal(head, params["wte.weight"], equal_nan=True):
        raise WeightsError(f"{path}: lm_head.weight differs from wte.weight; GPT-2 ties them and so does this code")
    return params


def _block_indices(params) -> set[int]:
    return {int(m.group(1)) for m in map(re.compile(r"^h\.(\d+)\.").match, params) if m}


def _check(config: GPTConfig, params: dict[str, np.ndarray], path: Path) -> None:
    """Every expected tensor present with its expected shape and a float dtype, and nothing else.

    The number of blocks is compared first: the table of expected shapes has an entry per block, so a config's
    n_layer must be the file's before it is built (n_layer 10**9 and no blocks is a short error, not a long
    wait)."""
    blocks = _block_indices(params)
    if len(blocks) != config.n_layer:
        raise WeightsError(f"{path}: the config says n_layer={config.n_layer} but the file has {len(blocks)} blocks")
    expected = parameter_shapes(config)

    def names(keys):
        keys = sorted(keys)
        return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

    if missing := expected.keys() - params.keys():
        raise WeightsError(f"{path}: missing tensors: {names(missing)}")
    if unexpected := params.keys() - expected.keys():
        raise WeightsError(f"{path}: unexpected tensors: {names(unexpected)}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise WeightsError(
                f"{path}: tensor '{name}' has shape {tuple(params[name].shape)}, the config implies {shape}"
            )
        if not np.issubdtype(params[name].dtype, np.floating):
            raise WeightsError(f"{path}: tensor '{name}' has dtype {params[name].dtype}, expected floating point")
