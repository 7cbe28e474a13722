"""Resolve a pretrained model name to local files through the Hugging Face hub cache."""

from pathlib import Path

from .errors import WeightsError

# Model name -> Hugging Face hub repository.
HUB_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
# Only these two files are fetched: no pytorch_model.bin, tf_model.h5, flax or onnx copies.
HUB_FILES = ("config.json", "model.safetensors")


def download(name: str) -> Path:
    """Return the snapshot directory holding config.json and model.safetensors of model `name`.

    huggingface_hub does the work: its cache (HF_HOME, HF_HUB_CACHE), its progress bar, and
    HF_HUB_OFFLINE=1, under which only the cache is read. A model already in the cache is used without asking
    the hub whether it changed (the released GPT-2 weights do not): no request at all. Otherwise every run would
    send one per file, and an unreachable hub would cost it the request's failure before the cache is read
    (measured: 0.9 s where the connection is refused; where packets are dropped, huggingface_hub's etag
    timeout, 10 s by default).
    """
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = HUB_REPOS[name]

    def files(**options):
        return [Path(huggingface_hub.hf_hub_download(repo, filename, **options)) for filename in HUB_FILES]

    try:
        try:
            paths = files(local_files_only=True)
        except LocalEntryNotFoundError:
            if huggingface_hub.constants.HF_HUB_OFFLINE:
                raise
            paths = files()
    except LocalEntryNotFoundError:
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            why = "HF_HUB_OFFLINE=1 is set and it is not in the cache"
        else:
            why = "the Hugging Face hub is unreachable and it is not in the cache"
        raise WeightsError(
            f"cannot get '{name}' ({repo}): {why} ({huggingface_hub.constants.HF_HUB_CACHE}); "
            "run once with network access to download it, or pass --init-from PATH to a local checkpoint"
        ) from None
    except Exception as e:  # HTTP errors, disk full, permission denied, ...
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WeightsError(f"cannot download '{name}' ({repo}) from the Hugging Face hub: {first_line}") from None
    return paths[0].parent
