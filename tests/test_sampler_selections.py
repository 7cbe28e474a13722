"""The sampler's fast selections against their definitions: weights.sampling.top_k_ids (the top k) and
outside_nucleus (the tokens top_p cuts).

Sampling must stay identical across backends, machines and versions, so each fast path is compared for exact
equality (no tolerance: these are integer ids) with its definition written as a full sort. top_k_ids: the k
largest values, ties broken by the lower id, on rows built to hit every case: distinct values, ties at the
k-th value, half-precision logits, the largest values in one chunk, infinities. outside_nucleus: the tokens,
ranked most probable first (ties by id), whose more probable tokens hold top_p already, as the sampler computed
them before it ranked only a prefix; on probabilities with ties, peaked and flat, and top_p set exactly at a
prefix's mass.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from weights.sampling import outside_nucleus, top_k_ids


def bfloat16_precision(row):
    """row cut to bfloat16's 8 significant bits, as float64: ties as in the torch backend's bfloat16 logits."""
    return (row.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)


def reference(row, k):
    by_rank = np.lexsort((np.arange(len(row)), -row))  # largest value first, a tie by the lower id
    return np.sort(by_rank[:k])


@st.composite
def rows_and_k(draw):
    V = draw(st.integers(2, 3000))
    k = draw(st.integers(1, V - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["gaussian", "few distinct values", "bfloat16", "sorted", "with inf"]))
    row = rng.standard_normal(V)
    if kind == "few distinct values":  # ties everywhere, so usually at the k-th value too
        row = rng.integers(-3, 3, V).astype(np.float64)
    elif kind == "bfloat16":
        row = bfloat16_precision(row)
    elif kind == "sorted":  # the largest values all in the last chunk
        row.sort()
    elif kind == "with inf":
        row[rng.integers(0, V, 3)] = rng.choice([np.inf, -np.inf], 3)
    return row, k


@given(rows_and_k())
def test_top_k_ids_keeps_the_k_largest_ties_to_the_lowest_ids(row_and_k):
    row, k = row_and_k
    np.testing.assert_array_equal(top_k_ids(row, k), reference(row, k))


def test_top_k_ids_on_a_vocabulary_sized_row():
    """The size the sampler sees (GPT-2's 50257 logits, k = 200), in float32 logits promoted to float64."""
    row = np.random.default_rng(0).standard_normal(50257).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(top_k_ids(row, 200), reference(row, 200))


def test_top_k_ids_on_a_vocabulary_sized_bfloat16_row():
    """Logits of bfloat16 precision tie across the 200th largest value on most rows (8 of the first 10 seeds;
    this one: checked), where a selection's choice of ids would be arbitrary; the lowest ids win."""
    row = bfloat16_precision(3 * np.random.default_rng(1).standard_normal(50257))  # 6 ids tied for 1 place
    kth = np.sort(row)[-200]
    assert np.count_nonzero(row > kth) < 200 < np.count_nonzero(row >= kth)  # a tie across the cut
    np.testing.assert_array_equal(top_k_ids(row, 200), reference(row, 200))


def nucleus_reference(p, top_p):
    order = np.argsort(-p, kind="stable")  # the whole vocabulary ranked, most probable first, ties by id
    mass_before = np.cumsum(p[order]) - p[order]
    return np.sort(order[mass_before >= top_p])


@st.composite
def probabilities_and_top_p(draw):
    n = draw(st.integers(1, 3000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["gaussian", "peaked", "few distinct values", "bfloat16"]))
    logits = rng.standard_normal(n) * (8.0 if kind == "peaked" else 1.0)
    if kind == "few distinct values":
        logits = rng.integers(-3, 3, n).astype(np.float64)
    elif kind == "bfloat16":
        logits = bfloat16_precision(3 * logits)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    if draw(st.booleans()):  # exactly a prefix's mass: the cut on the boundary
        top_p = float(np.cumsum(np.sort(p)[::-1])[draw(st.integers(0, n - 1))])
    else:
        top_p = draw(st.floats(0.01, 1.0))
    return p, min(top_p, 1.0)


@given(probabilities_and_top_p(), st.integers(1, 64))
def test_outside_nucleus_is_the_full_sorts_cut(p_and_top_p, first_try):
    """first_try small, so that rows of a few hundred tokens rank a prefix first and widen it."""
    p, top_p = p_and_top_p
    np.testing.assert_array_equal(np.flatnonzero(outside_nucleus(p, top_p, first_try)), nucleus_reference(p, top_p))


def test_outside_nucleus_on_vocabulary_sized_rows():
    """50257 probabilities: peaked (a nucleus of a few tokens, found in the first 64) and flat (nearly the whole
    vocabulary: the prefix widens until it is all of it)."""
    rng = np.random.default_rng(2)
    for scale, top_p in ((6.0, 0.9), (0.1, 0.95)):
        logits = scale * rng.standard_normal(50257)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        np.testing.assert_array_equal(np.flatnonzero(outside_nucleus(p, top_p)), nucleus_reference(p, top_p))
