"""GPTConfig: the hyperparameters of a GPT-2 model, shared by both backends."""

from dataclasses import dataclass


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context (number of learned positions)
    vocab_size: int = 50304  # nanoGPT's default: 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the Linear layers and LayerNorms, as GPT-2 has them

    def __post_init__(self):
        """Every field's type and range, checked here because configs come from files: a string or null
        where a number belongs must be one clear error, not a traceback wherever the field is first used.
        Sizes are not bounded here; the loader checks them against the tensors in the file."""
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        dropout = self.dropout  # a probability, as torch.nn.Dropout takes it
        if not isinstance(dropout, int | float) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1], got {dropout!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig.bias must be true or false, got {self.bias!r}")


# The pretrained OpenAI checkpoints (and Hugging Face's distilled one), by name.
PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),  # 82M
}
PRETRAINED_VOCAB_SIZE = 50257


def preset(name: str) -> GPTConfig:
    """The GPTConfig of a pretrained model: `preset("gpt2-medium")`."""
    return GPTConfig(block_size=1024, vocab_size=PRETRAINED_VOCAB_SIZE, bias=True, **PRESETS[name])
