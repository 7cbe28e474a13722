"""Sample text from a pretrained GPT-2 with the PyTorch or the NumPy backend.

    uv run sample.py --start="Hello, my name is"
    uv run sample.py --backend numpy --start=FILE:prompts/love_letter.txt --num_samples 2

nanoGPT's sample.py options and defaults, plus --init-from, --backend, --dtype, --compile, --top_p and
--batch_size. The same --seed prints the same text from both backends: they share one sampling algorithm.
The samples are drawn in batches; sample i draws from its own random stream, fixed by (seed, i), so its text
does not depend on --num_samples or --batch_size (in float32, up to rare near-ties: see the README).
Exit status: 0 the samples were printed, 1 the run failed (NaN or infinite logits, an error of torch's),
2 bad input (usage, a checkpoint or prompt file that cannot be read, standard output that cannot be written).
"""

import codecs
import sys

import numpy as np

from weights import NonFiniteLogitsError, WeightsError, cli, tokenizer
from weights.sampling import cache_length, default_batch_size, row_generators

SEPARATOR = "---------------"


def parse_args(argv=None):
    p = cli.Parser(prog="sample.py", description="Sample text from GPT-2 with the PyTorch or the NumPy backend.",
                   epilog="Samples are written as UTF-8, whatever the locale. Exit status: 0 success, 1 the run "
                          "failed (NaN or infinite logits, an error of torch's), 2 bad input or unwritable output.")
    p.add_argument("--init-from", "--init_from", dest="init_from", default="gpt2",
                   help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 (Hugging Face hub, cached), or the path "
                        "of a Hugging Face directory, a .safetensors file or a nanoGPT ckpt.pt (default: gpt2)")
    p.add_argument("--start", default="\n",
                   help='the prompt; FILE:path reads it from a UTF-8 text file (a regular file of at most '
                        f'{cli.PROMPT_LIMIT // 2**20} MiB); <|endoftext|> is allowed; an empty prompt starts from '
                        '<|endoftext|>; a prompt longer than block_size keeps its last block_size tokens '
                        '(default: "\\n")')
    p.add_argument("--num_samples", "--num-samples", type=cli.number(int, 1), default=1,
                   help="samples to draw (default: 1)")
    p.add_argument("--batch_size", "--batch-size", type=cli.number(int, 1), default=None,
                   help="samples drawn together, in one batch (the prompt runs once per batch); sample i's text "
                        "is the same whatever the batch size, but for rare float32 near-ties (default: all "
                        "samples, but no more than keep the batch's KV cache, counted in values, within half the "
                        "model's number of weights: 26 for GPT-2 124M with a 128-token cache, 3 with a 1024-token "
                        "one)")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=cli.number(int, 0), default=100,
                   help="tokens generated per sample (default: 100)")
    p.add_argument("--temperature", type=cli.number(float, 0.0), default=0.8,
                   help="1.0 samples the model's distribution, lower is more conservative, 0 is greedy (default: 0.8)")
    p.add_argument("--top_k", "--top-k", type=cli.number(int, 0), default=200,
                   help="sample only from the k most likely tokens; 0 disables (default: 200)")
    p.add_argument("--top_p", "--top-p", type=cli.number(float, 0.0, 1.0, low_open=True), default=None,
                   help="sample only from the smallest set of tokens whose probability reaches p (default: off)")
    p.add_argument("--seed", type=cli.number(int, 0), default=1337, help="random seed (default: 1337)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps; the NumPy backend is cpu only (default: cpu)")
    p.add_argument("--backend", choices=("torch", "numpy"), default="torch", help="the implementation (default: torch)")
    p.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"), default="float32",
                   help="torch: all four; numpy: float32 or float64 (default: float32)")
    p.add_argument("--compile", action="store_true",
                   help="compile the decoding step into one graph with torch.compile, a CUDA graph on a GPU (torch "
                        "backend only; the first sample waits for the compiler, see the README)")
    args = p.parse_args(argv)
    if args.backend == "numpy":
        if args.device != "cpu":
            p.error(f"--device {args.device}: the NumPy backend runs on the CPU only")
        if args.dtype not in ("float32", "float64"):
            p.error(f"--dtype {args.dtype}: the NumPy backend computes in float32 or float64 only")
        if args.compile:
            p.error("--compile is for the torch backend")
    return args


def load_model(args):
    if args.backend == "numpy":
        from gpt2_numpy import GPT

        return GPT.from_pretrained(args.init_from, dtype=args.dtype)
    from gpt2_torch import GPT

    model = GPT.from_pretrained(args.init_from, device=args.device, dtype=args.dtype)
    if args.compile:
        model.compile_decode_step()
    return model


def fail(message, status=2):
    cli.fail("sample.py", message, status)


def main(argv=None) -> int:
    """Print the samples; return 0, or exit with 1 or 2 (see the module docstring) and one line on stderr."""
    args = parse_args(argv)
    try:
        text = cli.read_prompt(args.start)
    except ValueError as e:
        fail(e)
    try:
        # NaN and infinities are refused where logits become tokens (weights.sampling.check_finite): NumPy's
        # warnings about them on the way there would only add lines to the one error.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            print_samples(args, text)
    except (NonFiniteLogitsError, RuntimeError) as e:  # RuntimeError: torch's (no C compiler, CUDA out of memory)
        with cli.writing_stdout():
            sys.stdout.flush()  # the samples printed so far stay printed, before the error
        fail(e, status=1)
    return 0


def print_samples(args, text):
    """Load the model and print args.num_samples continuations of the prompt text, in batches."""
    try:
        model = load_model(args)
        ids, note = tokenizer.encode_prompt(text, model.config.vocab_size, model.config.block_size)
    except (WeightsError, tokenizer.TokenizerError, ValueError) as e:
        fail(e)
    if note:  # the prompt was cropped to block_size
        print(f"sample.py: {note}", file=sys.stderr)
    cache_positions = cache_length(len(ids), args.max_new_tokens, model.config.block_size)
    batch_size = args.batch_size or default_batch_size(args.num_samples, model.config, cache_positions)
    for first in range(0, args.num_samples, batch_size):
        print_batch(args, model, ids, range(first, min(first + batch_size, args.num_samples)))


def print_batch(args, model, ids, samples):
    """Draw the samples (indices) as one batch from the prompt ids, and print them in order, each followed by
    the separator line. Sample i draws from its own random stream, fixed by (seed, i) alone, so its text does
    not depend on the batch it falls in. On a terminal the batch's first sample is printed as it grows."""
    stream = sys.stdout.isatty()

    def write(text):
        with cli.writing_stdout():
            sys.stdout.write(text)
            sys.stdout.flush()

    # incremental decoders: a token may end in the middle of a UTF-8 character
    decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in samples]
    texts = [decoder.decode(tokenizer.decode_bytes(ids)) for decoder in decoders]
    if stream:
        write(texts[0])
    steps = model.generate_tokens(np.array([ids]), args.max_new_tokens, args.temperature, args.top_k or None,
                                  args.top_p, row_generators(args.seed, samples))  # the prompt runs once
    for next_ids in steps:  # (batch,)
        for row, (decoder, token) in enumerate(zip(decoders, next_ids)):
            piece = decoder.decode(tokenizer.decode_bytes([token]))
            texts[row] += piece
            if stream and row == 0:
                write(piece)
    for row, decoder in enumerate(decoders):
        piece = decoder.decode(b"", final=True)
        texts[row] += piece
        write((piece if stream and row == 0 else texts[row]) + "\n" + SEPARATOR + "\n")


if __name__ == "__main__":
    cli.run("sample.py", main)
