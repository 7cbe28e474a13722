"""Choosing the next token, and the decoding loop: one algorithm for both backends.

Both backends hand their final-position logits to `sample_next` as NumPy arrays, and both drive their
forward pass through `generate_tokens`. So the random draws come from the same NumPy generators in the same
order (one for all rows, or one per row: `row_generators`), and the same seed gives the same text from the
PyTorch and the NumPy backend: the tokens can only
differ where the two backends' float32 logits (which agree to about 1e-6) fall on different sides of a
decision — see "Backend-identical sampling" in the README for how rare that is.
"""

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .config import GPTConfig
from .errors import NonFiniteLogitsError
from .loader import parameter_count

NON_FINITE = (
    "the model's logits are NaN or infinite, so no token can be drawn: the checkpoint holds NaN or infinite "
    "weights, or the computation overflowed its dtype (float16 stops at 65504: use bfloat16 or float32)"
)


def check_finite(logits: np.ndarray) -> None:
    """Raise NonFiniteLogitsError unless every logit is finite: NaN and inf must never become text.

    Called on every step's logits; it costs about 12 us on a (1, 50257) float64 row (measured on this
    project's 2-core machine), against tens of milliseconds for the forward pass that made the row."""
    if not np.isfinite(logits).all():
        raise NonFiniteLogitsError(NON_FINITE)


def row_generators(seed: int, rows: Sequence[int]) -> list[np.random.Generator]:
    """One random stream per sample index i in rows, fixed by (seed, i) alone: SeedSequence(seed, spawn_key=(i,))
    is the i-th child SeedSequence(seed).spawn(n) makes for any n > i, so sample i draws the same numbers
    however many samples there are and whichever batch it falls in."""
    return [np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,))) for i in rows]


def sample_next(logits, rng: np.random.Generator | Sequence[np.random.Generator], temperature=1.0, top_k=None,
                top_p=None) -> np.ndarray:
    """Draw one token per row of logits (B, V) -> ids (B,).

    rng is one generator for all rows (B draws a step, in row order), or B generators, one per row
    (row_generators): each row then draws from its own stream, whatever the other rows are.

    temperature 0 (or top_k 1) is greedy decoding: the argmax, no random draw. A temperature so small that the
    logits divided by it overflow (1e-320, say) is greedy decoding too: see the division below.
    top_k keeps the k largest logits, of those tied at the k-th the lowest ids (None, 0, or >= V keep all);
    top_p keeps the smallest set of most probable tokens whose probability reaches top_p (the nucleus; None or 1
    keep all).
    The draw is an inverse-CDF lookup of one uniform number per row, the CDF summed in token-id order
    in float64, so its outcome depends on the logits' values only, not on how a backend sorted them.
    Raises NonFiniteLogitsError if a logit is NaN or infinite.
    """
    if not temperature >= 0:  # written so that NaN fails too
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = np.asarray(logits)  # (B, V)
    if logits.dtype not in (np.float32, np.float64):
        logits = logits.astype(np.float64)
    # float32 logits (every backend's but float64's) stay float32 until the candidates are chosen: float64 holds
    # each float32 exactly and in the same order, so the argmax, the top k and their ties are the same, and the
    # passes over all V logits read half the bytes (8 rows of 50257: top_k 200 1.39 -> 0.88 ms, greedy 0.23 -> 0.08).
    check_finite(logits)
    B, V = logits.shape
    if temperature == 0 or top_k == 1:
        return logits.argmax(axis=-1)  # (B,)
    if isinstance(rng, np.random.Generator):
        u = rng.random(B)  # (B,) drawn up front, so the stream of draws never depends on the logits
    else:
        if len(rng) != B:
            raise ValueError(f"{len(rng)} generators for {B} rows")
        u = np.array([row_rng.random() for row_rng in rng])  # (B,) one draw from each row's own stream
    tokens = np.empty(B, dtype=np.int64)
    for b in range(B):
        candidates = np.arange(V)
        if top_k and top_k < V:
            candidates = top_k_ids(logits[b], top_k)  # (k,) top-k ids, in id order
        row = logits[b, candidates].astype(np.float64, copy=False)  # (k,) float64: the draw adds no rounding
        # The maximum is subtracted before dividing: the differences are finite and <= 0, so however small the
        # temperature, z is in [-inf, 0] with a 0 at the maximum, and exp gives no NaN. At 1e-320, exp underflows
        # to 0 for every token below the maximum: greedy decoding (a draw among exactly tied maxima, the limit
        # of the distribution). Dividing first, logits / 1e-320 overflows to +-inf, and inf - inf is NaN.
        with np.errstate(over="ignore"):  # that overflow to -inf is the intended result: no warning (~1 us)
            z = (row - row.max()) / temperature
        p = np.exp(z)
        p /= p.sum()
        if top_p is not None and top_p < 1:
            p[outside_nucleus(p, top_p)] = 0.0
            p /= p.sum()
        cdf = np.cumsum(p)
        tokens[b] = candidates[min(np.searchsorted(cdf, u[b] * cdf[-1], side="right"), len(candidates) - 1)]
    return tokens


def outside_nucleus(p: np.ndarray, top_p: float, first_try: int = 64) -> np.ndarray:
    """(n,) bool, True for the tokens outside the nucleus of probabilities p (n,): ranked most probable first
    (ties by id), those whose more probable tokens already hold top_p.

    The nucleus is a prefix of that ranking, usually short, so only the tokens at or above the m-th largest
    probability are ranked: m = first_try, then 8 times more if those held 3/4 of top_p, then all of them (a
    flat distribution's nucleus of thousands: the tries cost 0.5-1 ms beside the 7-8 ms of ranking all 50257).
    The ranking and cumulative sums of the m are the first of the whole vocabulary's, the same floats. The
    ranked prefix settles the rest only if its mass passes top_p by more than float64 rounding could move a
    later token's (about 1e-16)."""
    n = len(p)
    m = first_try if n > 8 * first_try else n  # a few hundred candidates (top_k's): one sort is cheapest
    while True:
        if m >= n:
            order = np.argsort(-p, kind="stable")  # (n,) most probable first, ties by id
        else:
            ranked = np.flatnonzero(p >= np.partition(p, n - m)[n - m])  # (>= m,) ids, in id order
            order = ranked[np.argsort(-p[ranked], kind="stable")]  # (>= m,) most probable first, ties by id
        ranked_p = p[order]
        mass = np.cumsum(ranked_p)  # the probability of each token and the tokens ranked above it
        if len(order) == n or mass[-1] >= top_p + 1e-12:
            break
        # a second try only where the first m held 3/4 of top_p already (a nucleus of hundreds, not thousands)
        m = 8 * m if m == first_try and 8 * m <= n // 8 and mass[-1] >= 0.75 * top_p else n
    outside = np.ones(n, dtype=bool)  # (n,) the tokens not ranked lie outside...
    outside[order[mass - ranked_p < top_p]] = False  # ...and so do those whose more probable tokens hold top_p
    return outside


def top_k_ids(row: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest values of row (V,), in id order; of values tied at the k-th largest, the lowest
    ids. row has no NaN (sample_next checks its logits first).

    Called once per sampled token, so it avoids a selection over all V values (a large share of a decoding
    step's time): the k maxima of k chunks of row are k values at or above their minimum, so that minimum
    bounds the k-th largest value from below and leaves a short list to select from. The tie rule makes the
    set a function of the values alone: half-precision logits take few distinct values, and a row of GPT-2's
    bfloat16 logits usually has several tied at the k-th (k = 200), where a selection's choice would be
    arbitrary (np.argpartition documents none).
    """
    V = len(row)
    bound = row[: k * (V // k)].reshape(k, V // k).max(axis=1).min()  # (k, V // k) chunks -> max -> min
    above = np.flatnonzero(row >= bound)  # (n,) n >= k ids, a superset of the top k, in id order
    values = row[above]  # (n,)
    kth = np.partition(values, len(values) - k)[len(values) - k]  # the k-th largest value
    keep = values > kth  # (n,) every value above the k-th...
    keep[np.flatnonzero(values == kth)[: k - np.count_nonzero(keep)]] = True  # ...and the lowest ids tied with it
    return above[keep]


def cache_length(prompt_tokens: int, max_new_tokens: int, block_size: int) -> int:
    """How many positions the KV cache of a generation needs: the prompt and the new tokens, rounded up to a
    power of two of at least 64, and at most block_size (past it the window slides and the cache is rebuilt
    from the window every step). Few lengths (64, 128, ..., 1024 for GPT-2) mean few shapes for a compiled
    decode step, which on a GPU attends over the whole cache: at most twice the positions it needs."""
    needed = prompt_tokens + max_new_tokens
    return min(block_size, max(64, 1 << (needed - 1).bit_length()))


def default_batch_size(num_samples: int, config: GPTConfig, cache_positions: int) -> int:
    """How many samples to draw at once when the user does not say: all of them, but no more than keep the
    batch's KV cache (2 x n_layer x n_embd values per position per sample, cache_positions positions, see
    cache_length) within half as many values as the model has weights. Decoding reads every weight once per
    step however many samples share the step, so a batch costs much less than its samples one by one (3-3.2x
    less for 8, measured), until its cache (read every step too) rivals the weights. GPT-2 124M: 26 samples of
    a 128-position cache, 3 of 1024."""
    per_sample = 2 * config.n_layer * config.n_embd * cache_positions
    return max(1, min(num_samples, parameter_count(config) // 2 // per_sample))


def batch_rows(idx: np.ndarray, rng) -> int:
    """How many sequences a generation from the prompt idx (B, T) with rng makes: B, or one per generator."""
    if rng is None or isinstance(rng, np.random.Generator):
        return idx.shape[0]
    if idx.shape[0] not in (1, len(rng)):
        raise ValueError(f"{len(rng)} generators for {idx.shape[0]} prompt rows")
    return len(rng)


def generate_tokens(
    forward: Callable[[np.ndarray, int], np.ndarray],
    idx: np.ndarray,
    max_new_tokens: int,
    block_size: int,
    rng: np.random.Generator | Sequence[np.random.Generator],
    temperature=1.0,
    top_k=None,
    top_p=None,
    use_cache=True,
) -> Iterator[np.ndarray]:
    """Yield max_new_tokens steps of new token ids (B,), continuing the prompt idx (B, T).

    forward(ids, start) runs the tokens ids (b, t) at positions start .. start+t-1 and returns the
    logits (b, V) of the last one. With use_cache, the backend keeps a KV cache: start is the number of
    tokens already in it, and start == 0 tells it to begin afresh. So the prompt is processed once and
    then one token per step. As in nanoGPT, the model only ever sees the last block_size tokens: once the
    text is longer, the window slides by one each step, every position embedding changes, and the cache
    is rebuilt from the cropped window (a full forward of block_size tokens per step).

    One prompt row with B generators (rng a list, B > 1) is one prompt shared by B samples: it runs once, as
    one row, and the next call hands forward B rows at start > 0, the backend's signal to copy its one row of
    cache to all B (expand_kv_cache). The logits are the same as B copies of the prompt would give.
    """
    idx = np.asarray(idx, dtype=np.int64)
    rows = batch_rows(idx, rng)  # B
    cached = 0  # tokens of idx whose keys and values are in the backend's cache
    for _ in range(max_new_tokens):
        if not use_cache or idx.shape[1] > block_size:
            start, new = 0, idx[:, -block_size:]  # (B, min(T, block_size)) everything, from scratch
        else:
            start, new = cached, idx[:, cached:]  # (B, t) only what the cache has not seen
        logits = forward(new, start)  # (B, V), or (1, V) for a shared prompt
        cached = start + new.shape[1]
        if idx.shape[0] < rows:  # the shared prompt has run: from here on, each sample is a row of its own
            idx = np.repeat(idx, rows, axis=0)  # (B, T)
            logits = np.repeat(logits, rows, axis=0)  # (B, V)
        next_ids = sample_next(logits, rng, temperature, top_k, top_p)  # (B,)
        idx = np.concatenate([idx, next_ids[:, None]], axis=1)  # (B, T + 1)
        yield next_ids
