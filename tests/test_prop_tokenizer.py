"""Property tests of the GPT-2 tokenizer (weights.tokenizer): lossless on any Unicode text, ids in the vocabulary.

All comparisons are exact: tokenization is integer and byte work, there is no rounding to allow for.
"""

from hypothesis import given
from hypothesis import strategies as st

from weights.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, VOCAB_SIZE, decode, decode_bytes, encode, last_tokens

# Pieces that exercise GPT-2's pre-tokenizer and the special token: contractions, runs of spaces and newlines,
# digits, combining marks, astral-plane characters, and fragments of <|endoftext|> that must stay plain text.
PIECES = [END_OF_TEXT, "<|", "|>", "endoftext", "<|endoftext", "'s", "'ll", "'RE", " ", "  ", "\n", "\n\n", "\r\n",
          "\t", "1234567", "e\u0301", "\u00e9", "\U0001f999", "\u4e2d\u6587", "\ufeff", "\x00"]  # fmt: skip
texts = st.text() | st.lists(st.text(max_size=8) | st.sampled_from(PIECES), max_size=30).map("".join)


@given(texts)
def test_decode_inverts_encode(text):
    """decode(encode(s)) == s for any text (no surrogates: str.encode("utf-8") refuses those too), including
    text that spells <|endoftext|>, which encode turns into its id and decode back into the same characters."""
    assert decode(encode(text)) == text


@given(texts)
def test_ids_are_in_the_vocabulary(text):
    """Every id is an int in [0, 50257), and <|endoftext|> (50256) appears exactly as often as the text spells it."""
    ids = encode(text)
    assert all(type(i) is int and 0 <= i < VOCAB_SIZE for i in ids)
    assert ids.count(END_OF_TEXT_ID) == text.count(END_OF_TEXT)


@given(texts)
def test_token_bytes_concatenate_to_the_utf8_text(text):
    """The raw bytes of the tokens, one token at a time, join to the text's UTF-8: what lets sample.py
    stream tokens whose boundaries fall inside a multi-byte character."""
    ids = encode(text)
    assert b"".join(decode_bytes([i]) for i in ids) == decode_bytes(ids) == text.encode("utf-8")


@given(st.lists(st.integers(0, VOCAB_SIZE - 1) | st.integers(VOCAB_SIZE, 50303) | st.integers()))
def test_any_ids_decode(ids):
    """Any ids, including those of nanoGPT's padded vocabulary (50257 .. 50303) and any other integer, decode
    without error; each id outside [0, 50257) becomes one U+FFFD and the others decode as they would alone."""
    expected = b"".join(decode_bytes([i]) if 0 <= i < VOCAB_SIZE else "\ufffd".encode() for i in ids)
    assert decode_bytes(ids) == expected
    assert decode(ids) == expected.decode("utf-8", errors="replace")


@given(texts, st.integers(1, 12), st.integers(1, 24))
def test_last_tokens_are_the_last_tokens_of_the_whole_text(text, n, chars):
    """last_tokens tokenises only a tail of the text, from a pre-token boundary, at first `chars` characters long:
    its tokens are exactly the last ones of encode(text), at least n of them, or all of them (whole). Small n and
    chars, so that the tail starts inside the text on most examples: in contractions, runs of spaces, special
    tokens and multi-character tokens alike."""
    ids, whole = last_tokens(text, n, chars)
    everything = encode(text)
    if whole:
        assert ids == everything
    else:
        assert len(ids) >= n and len(everything) > len(ids) and everything[-len(ids):] == ids
