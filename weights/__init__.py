"""The framework-neutral half of the suite, shared by both backends (it never imports torch itself):

- config.py     GPTConfig and the pretrained presets
- loader.py     load(source) -> (GPTConfig, {canonical name: NumPy array}); the canonical names live there
- hub.py        model names -> the Hugging Face hub cache
- tokenizer.py  GPT-2's BPE (tiktoken), from the rank file shipped here
- cli.py        what sample.py and compare.py share on the command line
- files.py      reading a file a user names (a prompt, a config.json): regular files only, with a bound
- sampling.py   the next-token draw and the decoding loop
- errors.py     WeightsError, and NonFiniteLogitsError for NaN or infinite logits
- trace_file.py golden traces: every activation of a forward pass in a .safetensors file (compare.py)
"""

from .config import PRESETS, GPTConfig, preset
from .errors import NonFiniteLogitsError, WeightsError
from .hub import HUB_REPOS
from .loader import load, parameter_count, parameter_shapes, release_pages, save, stored_out_in

__all__ = ["GPTConfig", "PRESETS", "preset", "WeightsError", "NonFiniteLogitsError", "HUB_REPOS", "load",
           "parameter_count", "parameter_shapes", "release_pages", "save",
           "stored_out_in"]
