"""Property tests of the loader: a random parameter dict written in each supported format loads back identical.

Each example draws a small GPTConfig (bias on or off where the format allows it), random parameters in
float16, float32 or float64, and the optional parts real checkpoints carry (a `transformer.` prefix or
not, the causal-mask buffers, a tied lm_head.weight). Every comparison is exact (np.array_equal and equal
dtypes): loading is copying and transposing, nothing may round.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

import weights
from tests.strategies import few_examples, model_configs, one_torch_thread, random_params, seeds
from weights.loader import MATRICES

FORMATS = ["weights.save", "hf-safetensors", "hf-sharded", "hf-pytorch-bin", "nanogpt-ckpt"]
HF_FORMATS = ("hf-safetensors", "hf-sharded", "hf-pytorch-bin")  # GPT2Config has no bias switch: bias=True only


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def hf_config(config):
    """config.json as transformers' GPT2Config writes it (the keys the loader reads, and some it checks)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "n_positions": config.block_size, "n_ctx": config.block_size, "vocab_size": config.vocab_size,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd, "layer_norm_epsilon": 1e-5,
    }  # fmt: skip


def hf_state(config, params, prefix, extras):
    """Hugging Face layout: (in, out) Conv1D matrices as in the canonical dict, optionally every name under
    `transformer.`, optionally the attn.bias / attn.masked_bias buffers and the tied lm_head.weight."""
    state = {prefix + name: value for name, value in params.items()}
    if extras:
        mask = np.tril(np.ones((config.block_size, config.block_size), params["wte.weight"].dtype))[None, None]
        for i in range(config.n_layer):
            state[f"{prefix}h.{i}.attn.bias"] = mask  # (1, 1, block_size, block_size)
            state[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, params["wte.weight"].dtype)
        state["lm_head.weight"] = params["wte.weight"]
    return state


def nanogpt_checkpoint(config, params, extras):
    """nanoGPT's ckpt.pt: model_args plus the state dict of a torch.compile'd GPT (_orig_mod.transformer.*),
    nn.Linear matrices stored (out, in), the lm_head tied to wte, and training bookkeeping beside it."""
    model = {}
    for name, value in params.items():
        value = value.T if name.endswith(MATRICES) else value  # canonical (in, out) -> nn.Linear (out, in)
        model[f"_orig_mod.transformer.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
    model["_orig_mod.lm_head.weight"] = model["_orig_mod.transformer.wte.weight"]
    if extras:  # nanoGPT registers the causal mask as a buffer when flash attention is unavailable
        mask = torch.ones(config.block_size, config.block_size).tril().view(1, 1, config.block_size, config.block_size)
        for i in range(config.n_layer):
            model[f"_orig_mod.transformer.h.{i}.attn.bias"] = mask
    model_args = dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                      block_size=config.block_size, bias=config.bias, vocab_size=config.vocab_size, dropout=0.0)
    return {"model": model, "model_args": model_args, "iter_num": 0, "best_val_loss": 1e9, "config": {"dataset": "x"}}


def write(fmt, directory, config, params, prefix, extras):
    """Write params in format fmt under directory; return the path to give weights.load."""
    if fmt == "weights.save":
        weights.save(directory / "model.safetensors", config, params)
        return directory / "model.safetensors"
    if fmt == "nanogpt-ckpt":
        torch.save(nanogpt_checkpoint(config, params, extras), directory / "ckpt.pt")
        return directory / "ckpt.pt"
    (directory / "config.json").write_text(json.dumps(hf_config(config)))
    state = hf_state(config, params, prefix, extras)
    if fmt == "hf-safetensors":
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "hf-sharded":
        names = sorted(state)
        shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        for shard, shard_names in shards.items():
            save_file({name: state[name] for name in shard_names}, str(directory / shard))
        weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}
        torch.save(tensors, directory / "pytorch_model.bin")
    return directory


@pytest.mark.parametrize("fmt", FORMATS)
@few_examples(3)
@given(seeds, st.sampled_from([np.float16, np.float32, np.float64]), st.sampled_from(["", "transformer."]),
       st.booleans(), st.data())
def test_every_format_loads_back_identical(fmt, seed, dtype, prefix, extras, data):
    """weights.load(written) == (config, params) exactly: the same GPTConfig, the same canonical names (no
    buffers, no lm_head), and every array bit-identical with its dtype."""
    config = data.draw(model_configs(bias=st.just(True) if fmt in HF_FORMATS else st.booleans()))
    params = random_params(config, seed, dtype)
    with tempfile.TemporaryDirectory() as directory:
        loaded_config, loaded = weights.load(write(fmt, Path(directory), config, params, prefix, extras))
        assert loaded_config == config
        assert loaded.keys() == params.keys()
        for name, value in params.items():
            assert loaded[name].dtype == value.dtype, name
            np.testing.assert_array_equal(loaded[name], value, err_msg=name)
