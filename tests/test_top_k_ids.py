"""weights.sampling.top_k_ids, the sampler's fast top-k, against the selection it replaces.

Sampling must stay identical across backends and versions, so the fast path is compared for exact
equality (no tolerance: these are integer ids) with np.sort(np.argpartition(...)), the sampler's former
top-k, on rows built to hit every branch: distinct values, ties at the k-th value, infinities and NaN.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from weights.sampling import top_k_ids


def reference(row, k):
    V = len(row)
    return np.sort(np.argpartition(row, V - k)[V - k:])


@st.composite
def rows_and_k(draw):
    V = draw(st.integers(2, 3000))
    k = draw(st.integers(1, V - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["gaussian", "few distinct values", "sorted", "with inf", "with nan"]))
    row = rng.standard_normal(V)
    if kind == "few distinct values":  # ties everywhere, so usually at the k-th value too
        row = rng.integers(-3, 3, V).astype(np.float64)
    elif kind == "sorted":  # the largest values all in the last chunk
        row.sort()
    elif kind == "with inf":
        row[rng.integers(0, V, 3)] = rng.choice([np.inf, -np.inf], 3)
    elif kind == "with nan":
        row[rng.integers(0, V)] = np.nan
    return row, k


@given(rows_and_k())
def test_top_k_ids_equals_sorted_argpartition(row_and_k):
    row, k = row_and_k
    np.testing.assert_array_equal(top_k_ids(row, k), reference(row, k))


def test_top_k_ids_on_a_vocabulary_sized_row():
    """The size the sampler sees (GPT-2's 50257 logits, k = 200), in float32 logits promoted to float64."""
    row = np.random.default_rng(0).standard_normal(50257).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(top_k_ids(row, 200), reference(row, 200))
