"""Model names (`--init-from gpt2`) resolve through huggingface_hub, offline, from a cache fabricated in a temp dir.

The cache has the hub's real layout (models--openai-community--gpt2/{blobs, refs/main, snapshots/<commit>}) but
TINY random weights written by transformers: nothing is downloaded. The subprocess tests give huggingface_hub
HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE through the environment, which it reads at import time, as a user would;
the in-process tests set the same values on huggingface_hub.constants, which it reads at each call.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

import weights
from conftest import write_checkpoint
from weights import GPTConfig, WeightsError

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMIT = "607a30d783dfa663caf39e06633721c8d4cfcd7e"  # any 40-hex commit id: refs/main points the hub at it
# vocab 256: the single-byte tokens, so that sample.py's default prompt "\n" (id 198) is inside it
TINY = GPTConfig(block_size=32, vocab_size=256, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny"), TINY.n_layer, TINY.n_head, TINY.n_embd,
                            TINY.vocab_size, TINY.block_size, seed=11)  # fmt: skip


def fabricate_hub_cache(cache: Path, repo: str, source: Path, filenames=("config.json", "model.safetensors")) -> Path:
    """Lay out files of `source` as huggingface_hub caches a download: content-addressed blobs, a snapshot of
    relative symlinks to them, and refs/main naming the snapshot's commit. Returns the snapshot directory."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for filename in filenames:
        data = (source / filename).read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / filename).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tiny_dir, tmp_path_factory) -> Path:
    """HF_HOME whose hub cache holds openai-community/gpt2 = the tiny checkpoint."""
    home = tmp_path_factory.mktemp("hf-home")
    fabricate_hub_cache(home / "hub", "openai-community/gpt2", tiny_dir)
    return home


def offline_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}


def run_sample(*args, env=None) -> subprocess.CompletedProcess:
    """sample.py in a subprocess; the NumPy backend, which spares the child the import of torch."""
    command = [sys.executable, "sample.py", "--backend", "numpy", "--max_new_tokens", "5", "--seed", "7", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_sample_init_from_gpt2_reads_the_offline_cache(hf_home, tiny_dir):
    from_hub = run_sample("--init-from", "gpt2", env=offline_env(hf_home))
    assert from_hub.returncode == 0, from_hub.stderr
    assert from_hub.stderr == ""
    # The same seed from the checkpoint's own directory prints the same text: the name resolved to these weights.
    from_dir = run_sample("--init-from", str(tiny_dir))
    assert from_dir.returncode == 0, from_dir.stderr
    assert from_hub.stdout == from_dir.stdout and from_hub.stdout.endswith("\n---------------\n")


def test_sample_with_an_empty_offline_cache_says_how_to_fix_it(tmp_path):
    result = run_sample("--init-from", "gpt2", env=offline_env(tmp_path))
    assert result.returncode == 2  # bad input: a model that cannot be had
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr and "--init-from" in result.stderr, result.stderr


@pytest.fixture
def offline_cache(monkeypatch, tmp_path):
    """Point the imported huggingface_hub at an empty cache under tmp_path, offline. Returns the cache directory."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def _memmap_behind(array):
    while array is not None and not isinstance(array, np.memmap):
        array = array.base
    return array


def test_load_gpt2_in_process_from_the_offline_cache(offline_cache, tiny_dir):
    snapshot = fabricate_hub_cache(offline_cache, "openai-community/gpt2", tiny_dir)
    config, params = weights.load("gpt2")
    expected_config, expected = weights.load(tiny_dir)
    assert config == expected_config == TINY
    assert params.keys() == expected.keys()
    for name, value in params.items():
        assert np.array_equal(value, expected[name]), name  # exact: the same bytes, read from another place
        # ...and read, memory-mapped, from the cache's blob that the snapshot links to
        assert Path(_memmap_behind(value).filename).resolve() == (snapshot / "model.safetensors").resolve(), name


@pytest.mark.parametrize("cached", [(), ("config.json",)], ids=["empty", "config.json only"])
def test_offline_and_not_cached(cached, offline_cache, tiny_dir):
    if cached:  # an interrupted first download
        fabricate_hub_cache(offline_cache, "openai-community/gpt2", tiny_dir, filenames=cached)
    with pytest.raises(WeightsError) as info:
        weights.load("gpt2")
    message = str(info.value)
    assert "\n" not in message
    for fragment in ("'gpt2'", "openai-community/gpt2", "HF_HUB_OFFLINE=1", str(offline_cache), "--init-from PATH"):
        assert fragment in message, message


# Written out here, not imported from weights.hub: the test states where each name must lead.
EXPECTED_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}


@pytest.mark.parametrize("name", EXPECTED_REPOS)
def test_only_config_json_and_model_safetensors_are_requested(name, tiny_dir, monkeypatch):
    requests = []

    def hf_hub_download(repo_id, filename, **kwargs):
        requests.append((repo_id, filename))
        return str(tiny_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    config, _ = weights.load(name)
    assert config == TINY  # the files it was handed, whatever the name's real size
    assert sorted(requests) == [(EXPECTED_REPOS[name], "config.json"), (EXPECTED_REPOS[name], "model.safetensors")]


def test_a_cached_model_is_used_without_asking_the_hub(tiny_dir, monkeypatch):
    """Online, a model in the cache is read with local_files_only=True and the hub is never asked (each run
    would otherwise send a request per file, which an unreachable hub makes fail slowly); a model not in the
    cache is then downloaded."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def hf_hub_download(repo_id, filename, local_files_only=False, **kwargs):
        calls.append((filename, local_files_only))
        if local_files_only and cached:
            return str(tiny_dir / filename)
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        return str(tiny_dir / filename)  # "downloaded"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    cached = True
    assert weights.load("gpt2")[0] == TINY
    assert calls == [("config.json", True), ("model.safetensors", True)]
    calls.clear()
    cached = False
    assert weights.load("gpt2")[0] == TINY
    assert calls == [("config.json", True), ("config.json", False), ("model.safetensors", False)]


def _fail_with(error):
    def hf_hub_download(repo_id, filename, **kwargs):
        raise error

    return hf_hub_download


def test_unreachable_hub_and_not_cached(monkeypatch):
    """What huggingface_hub raises online when the hub cannot be reached and nothing is cached (checked by hand with
    HF_ENDPOINT=http://127.0.0.1:9: LocalEntryNotFoundError after ~25 s of retries, too slow for the suite)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fail_with(LocalEntryNotFoundError("no connection")))
    with pytest.raises(WeightsError) as info:
        weights.load("gpt2-medium")
    for fragment in ("openai-community/gpt2-medium", "unreachable", "run once with network access", "--init-from PATH"):
        assert fragment in str(info.value), str(info.value)


def test_other_download_failures_keep_their_first_line(monkeypatch):
    error = OSError("[Errno 28] No space left on device\nmore detail")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fail_with(error))
    with pytest.raises(WeightsError) as info:
        weights.load("gpt2")
    expected = "cannot download 'gpt2' (openai-community/gpt2) from the Hugging Face hub: [Errno 28] No space left on device"
    assert str(info.value) == expected
