"""GPT-2's byte-pair-encoding tokenizer, built by tiktoken from the rank file shipped beside this module.

gpt2.tiktoken is OpenAI's file (MIT License, see NOTICE-gpt2.tiktoken.md): one `base64(token) rank`
pair per line for the 50,256 merged tokens; <|endoftext|> (50256) is added as a special token.
Loading it never touches the network, and the file is checked against its published sha256.
"""

import base64
import functools
import hashlib
import re
from pathlib import Path

import tiktoken

BPE_FILE = Path(__file__).with_name("gpt2.tiktoken")
BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken's r50k_base hash
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
VOCAB_SIZE = 50257
# tiktoken's r50k pattern (the regex that splits text into words before BPE), as GPT-2 used it.
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerError(Exception):
    pass


@functools.cache
def get_encoding(bpe_file: Path = BPE_FILE) -> tiktoken.Encoding:
    """The GPT-2 encoding. Raises TokenizerError if the rank file is missing or not the published one."""
    try:
        contents = Path(bpe_file).read_bytes()
    except OSError as e:
        raise TokenizerError(f"{bpe_file}: cannot read the GPT-2 BPE file ({e.strerror})") from None
    digest = hashlib.sha256(contents).hexdigest()
    if digest != BPE_SHA256:
        raise TokenizerError(f"{bpe_file}: sha256 {digest} is not the GPT-2 BPE file's {BPE_SHA256}; it was modified")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in contents.splitlines() if line)}
    return tiktoken.Encoding(
        name="gpt2", pat_str=PATTERN, mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID}, explicit_n_vocab=VOCAB_SIZE,
    )  # fmt: skip


def encode(text: str) -> list[int]:
    """Token ids of text; special tokens written in it (<|endoftext|>) become their ids."""
    return get_encoding().encode(text, allowed_special="all")


def encode_prompt(text: str, vocab_size: int, block_size: int) -> tuple[list[int], str | None]:
    """A prompt's ids for a model: an empty prompt is <|endoftext|>, and one longer than block_size keeps its
    last block_size tokens, tokenising only as much of its end as that takes (see last_tokens). Returns (ids,
    a note saying it was cropped, or None). Raises TokenizerError when a kept token id is outside the model's
    vocabulary (one trained on fewer tokens than GPT-2's)."""
    ids, whole = last_tokens(text, block_size)
    ids = ids or [END_OF_TEXT_ID]
    note = None
    if len(ids) > block_size or not whole:
        count = f"{len(ids)}" if whole else f"more than {len(ids)}"
        note = f"the prompt has {count} tokens; keeping the last {block_size} (block_size)"
        ids = ids[-block_size:]
    if max(ids) >= vocab_size:
        raise TokenizerError(f"the prompt has token id {max(ids)}, but this model's vocabulary has {vocab_size} tokens")
    return ids, note


# A place where the text's split into pre-tokens (the pieces PATTERN cuts it into before BPE) surely has a
# boundary: after a non-space character that a space or a newline follows. No alternative of PATTERN matches a
# non-space character followed by whitespace (whitespace in a piece comes first, or is all of it), so every
# split of the text ends a piece there; and PATTERN looks only ahead, never behind, so the split of the text
# from there on is the whole text's split from there on. Special tokens hold no whitespace: none is cut.
# (Python's \S excludes every character that str.isspace() accepts, a superset of Unicode's White_Space, which
# is the regex's \s: a character taken for non-space here is non-space to the tokenizer too.)
_BOUNDARY = re.compile(r"\S(?=[ \n])")


def last_tokens(text: str, n: int, chars: int | None = None) -> tuple[list[int], bool]:
    """(ids, whole): the tokens of a tail of text that are the last tokens of encode(text), at least n of them
    unless whole is True, when they are all of encode(text).

    A long prompt keeps only its last n tokens, so tokenising all of it is wasted work and memory (an 8 MiB
    prompt is about 2 million tokens, some 100 MB as a list of Python ints). The tail starts at a boundary
    that every split of the text has (_BOUNDARY), so its tokens are exactly the whole text's last ones. It is
    chars characters long at first, 8 per wanted token (English averages about 4 characters a token, so one
    try nearly always suffices), and doubles until it holds n tokens: at most about twice the work of
    tokenising everything, for text whose tokens are unusually long. Text with no boundary is tokenised whole.
    """
    chars = chars or 8 * n
    while len(text) > chars:
        boundary = _BOUNDARY.search(text, len(text) - chars)
        if boundary is None:
            break
        ids = encode(text[boundary.end():])
        if len(ids) >= n:
            return ids, False
        chars *= 2
    return encode(text), True


def decode(ids) -> str:
    return decode_bytes(ids).decode("utf-8", errors="replace")


def decode_bytes(ids) -> bytes:
    """The raw bytes of tokens: one token can end in the middle of a UTF-8 character, so stream these.

    Ids outside GPT-2's vocabulary (nanoGPT pads it to 50304) decode to U+FFFD, the replacement character."""
    ids = [int(i) for i in ids]
    encoding = get_encoding()
    if all(0 <= i < VOCAB_SIZE for i in ids):
        return encoding.decode_bytes(ids)
    return b"".join(encoding.decode_single_token_bytes(i) if 0 <= i < VOCAB_SIZE else "\ufffd".encode() for i in ids)
