"""GPT-2's tokenizer: tiktoken with the rank file shipped in weights/, checked by its sha256.

Expected ids come from outside the code under test: well-known GPT-2 ids, GPT-2's byte order (openai/gpt-2
encoder.py's bytes_to_unicode, written out below), and tiktoken's own `r50k_base` definition (GPT-2's
encoding: its pattern and special token, fed the same rank file from an offline cache).
"""

import codecs
import hashlib
import shutil

import numpy as np
import pytest
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

from weights import tokenizer
from weights.tokenizer import BPE_FILE, TokenizerError, decode, decode_bytes, encode, get_encoding

KNOWN_IDS = {
    "Hello, my name is": [15496, 11, 616, 1438, 318],
    "Hello world": [15496, 995],
    "hello": [31373],
    "The": [464],
    " the": [262],
    "!": [0],
    " ": [220],
    "\n": [198],
    "\n\n": [628],
    "<|endoftext|>": [50256],
    "<|endoftext|>Hello": [50256, 15496],
}


@pytest.mark.parametrize("text", KNOWN_IDS)
def test_known_ids(text):
    assert encode(text) == KNOWN_IDS[text]
    assert decode(KNOWN_IDS[text]) == text


def gpt2_byte_order() -> list[int]:
    """GPT-2's bytes_to_unicode order: the printable bytes first, then the others. Token ids 0-255 are these bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return printable + [b for b in range(256) if b not in printable]


def test_ids_0_to_255_are_the_single_bytes_in_gpt2_order():
    assert [decode_bytes([i]) for i in range(256)] == [bytes([b]) for b in gpt2_byte_order()]


def test_decode_bytes_of_tokens_that_end_mid_character():
    order = gpt2_byte_order()
    e_acute = [order.index(0xC3), order.index(0xA9)]  # "é" is C3 A9 in UTF-8
    assert decode_bytes(e_acute[:1]) == b"\xc3" and decode(e_acute[:1]) == "\ufffd"
    assert decode(e_acute) == "é"
    # a real encoding: GPT-2 splits the 4-byte emoji across tokens, so at least one token ends mid-character
    ids = encode("🙂")
    pieces = [decode_bytes([i]) for i in ids]
    assert b"".join(pieces) == "🙂".encode()
    assert any(not _is_utf8(piece) for piece in pieces)
    decoder = codecs.getincrementaldecoder("utf-8")()  # how sample.py streams: no U+FFFD at the token boundary
    assert "".join(decoder.decode(piece) for piece in pieces) == "🙂"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_ids_outside_the_vocabulary_decode_to_the_replacement_character():
    assert decode([50257]) == "\ufffd"  # nanoGPT's vocabulary is padded to 50304; ids past 50256 are not tokens
    assert decode([15496, 50303, 11]) == "Hello\ufffd,"
    assert decode([-1]) == "\ufffd"
    assert decode(np.array([15496, 50300], dtype=np.int64)) == "Hello\ufffd"  # the backends hand over NumPy ids


TRICKY = [
    "",
    "👩‍👩‍👧 family, 🇫🇷 flag, 👍🏽 skin tone",
    "日本語のテキストと中文文本",
    "e\u0301 vs é, n\u0303, a\u030a\u0323",  # combining marks
    "مرحبا بالعالم שלום",
    "tabs\t\tand   spaces    \n\n\n  \r\n  \u00a0\u2003\u3000 runs   ",
    "\x00\x01\x7f control \u2028 separators \ufeff",
    "it's we'll they're I'M 'quoted'",
    "<|endoftext|> between <|endoftext|><|endoftext|>",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 outside the BMP 𐍈",
]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_and_tiktoken_agree_on_tricky_text(text, r50k_base):
    ids = encode(text)
    assert decode(ids) == text
    assert ids == r50k_base.encode(text, allowed_special="all")


@given(st.text())
def test_round_trip_and_tiktoken_agree_on_any_text(r50k_base, text):
    ids = encode(text)
    assert decode(ids) == text
    assert ids == r50k_base.encode(text, allowed_special="all")


R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # tiktoken_ext/openai_public.py


@pytest.fixture(scope="module")
def r50k_base(tmp_path_factory) -> tiktoken.Encoding:
    """tiktoken's own r50k_base, built offline: tiktoken looks in TIKTOKEN_CACHE_DIR for a file named sha1(url)
    before it downloads, and accepts it if its sha256 is the published one."""
    assert hashlib.sha256(BPE_FILE.read_bytes()).hexdigest() == R50K_SHA256  # else tiktoken would try to download
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    shutil.copy(BPE_FILE, cache / hashlib.sha1(R50K_URL.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding("r50k_base")


def test_the_shipped_rank_file_is_the_published_one():
    assert hashlib.sha256(BPE_FILE.read_bytes()).hexdigest() == R50K_SHA256 == tokenizer.BPE_SHA256


def test_an_unmodified_copy_elsewhere_loads(tmp_path):
    """The control for the next test: only the modification is refused, not the location."""
    shutil.copy(BPE_FILE, tmp_path / "gpt2.tiktoken")
    assert get_encoding(tmp_path / "gpt2.tiktoken").encode("Hello, my name is") == KNOWN_IDS["Hello, my name is"]


def _swap_two_tokens(data: bytes) -> bytes:
    """Exchange the tokens of ranks 1000 and 1001: the file still parses, only its hash tells."""
    lines = data.split(b"\n")
    (a, rank_a), (b, rank_b) = lines[1000].split(), lines[1001].split()
    lines[1000], lines[1001] = b + b" " + rank_a, a + b" " + rank_b
    return b"\n".join(lines)


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("modify", [_swap_two_tokens, _truncate], ids=["swapped", "truncated"])
def test_a_modified_rank_file_is_refused(modify, tmp_path):
    modified = tmp_path / "gpt2.tiktoken"
    modified.write_bytes(modify(BPE_FILE.read_bytes()))
    with pytest.raises(TokenizerError) as info:
        get_encoding(modified)
    message = str(info.value)
    assert str(modified) in message and "sha256" in message and "modified" in message, message


def test_a_missing_rank_file_is_refused(tmp_path):
    with pytest.raises(TokenizerError) as info:
        get_encoding(tmp_path / "absent.tiktoken")
    message = str(info.value)
    assert str(tmp_path / "absent.tiktoken") in message and "cannot read" in message, message


# --- encode_prompt: what both CLIs feed a model ------------------------------------------------------

def test_encode_prompt_for_a_model():
    """Ids from KNOWN_IDS: "" starts from <|endoftext|>, a prompt within block_size is kept whole."""
    assert tokenizer.encode_prompt("", vocab_size=50257, block_size=8) == ([50256], None)
    assert tokenizer.encode_prompt("Hello, my name is", 50304, 5) == ([15496, 11, 616, 1438, 318], None)


def test_encode_prompt_keeps_the_last_block_size_tokens_and_says_so():
    ids, note = tokenizer.encode_prompt("Hello, my name is", 50257, block_size=3)
    assert ids == [616, 1438, 318]
    assert note == "the prompt has 5 tokens; keeping the last 3 (block_size)"


def test_encode_prompt_refuses_ids_outside_the_models_vocabulary():
    """"Hello" is 15496: a model with 15496 tokens cannot read it, one with 15497 can."""
    message = "the prompt has token id 15496, but this model's vocabulary has 15496 tokens"
    with pytest.raises(TokenizerError, match=message):
        tokenizer.encode_prompt("Hello", vocab_size=15496, block_size=8)
    assert tokenizer.encode_prompt("Hello", vocab_size=15497, block_size=8) == ([15496], None)
