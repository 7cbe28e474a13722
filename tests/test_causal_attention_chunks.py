"""gpt2_numpy's causal_attention, which attends a chunk of queries at a time, against attention in one piece.

The chunks only skip keys that the causal mask hides, so the result is the same function; it is not
bit-identical, because a shorter row is summed in a different order (the masked terms are exact zeros,
but BLAS and the softmax's sum block differently). In float64 the two agree to 1e-12 here: terms of order 1,
rows of at most 70 keys, so rounding differences stay within a few hundred eps64 (2.2e-16 each).
"""

import numpy as np
import pytest

from gpt2_numpy.model import attention, causal_attention, causal_mask


@pytest.mark.parametrize("T, S", [(70, 70), (37, 60), (1, 50), (16, 16)])
@pytest.mark.parametrize("chunk", [1, 16, 128])
def test_chunks_equal_one_piece(T, S, chunk):
    rng = np.random.default_rng(T * S + chunk)
    q, k, v = (rng.standard_normal((2, 3, n, 8)) for n in (T, S, S))  # (B, nh, T or S, hs)
    mask = causal_mask(T, S, np.float64) if T > 1 else None
    np.testing.assert_allclose(causal_attention(q, k, v, mask, chunk), attention(q, k, v, mask), rtol=0, atol=1e-12)


def test_chunk_ends_at_the_last_key_its_queries_see():
    """A query must not lose a key it sees: with T = S and chunk 1, query t sees keys 0 .. t exactly. A value
    that only the last key carries shows up in the last query's output, and in no earlier one."""
    T = S = 5
    q, k = np.zeros((1, 1, T, 2)), np.zeros((1, 1, S, 2))  # all scores equal: uniform attention
    v = np.zeros((1, 1, S, 2))
    v[..., -1, 0] = 1.0
    y = causal_attention(q, k, v, causal_mask(T, S, np.float64), chunk=1)
    np.testing.assert_array_equal(y[0, 0, :, 0], [0, 0, 0, 0, 1 / S])
