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
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


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
