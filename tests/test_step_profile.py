"""`python -m benchmarks.step_profile`'s bookkeeping on small random checkpoints: what its timers add up and
what they leave behind. Nothing here judges a speed."""

import re
import time

import pytest

import gpt2_numpy.model
import weights
from benchmarks import step_profile
from gpt2_torch.few_row_products import FewRowLinear
from torch.nn import functional as F

pytestmark = pytest.mark.usefixtures("one_thread")


class Owner:
    @staticmethod
    def nap(seconds):
        time.sleep(seconds)
        return seconds


def test_timers_add_each_call_to_its_part_and_put_the_originals_back():
    original = Owner.__dict__["nap"]
    with step_profile.timers([(Owner, "nap", lambda seconds: "long" if seconds > 0.005 else "short")], {}) as clock:
        clock.update(long=0.0, short=0.0)
        assert Owner.nap(0.01) == 0.01 and Owner.nap(0.001) == 0.001
    assert Owner.__dict__["nap"] is original
    # time.sleep sleeps at least as long as asked; the upper bounds only catch a call counted twice or in
    # the wrong part (each allows 50 ms of scheduling delay)
    assert 0.01 <= clock["long"] < 0.06 and 0.001 <= clock["short"] < 0.051
    with pytest.raises(ZeroDivisionError), step_profile.timers([(Owner, "nap", "part")], {"part": 0.0}):
        Owner.nap(1 / 0)
    assert Owner.__dict__["nap"] is original  # back after an error too


def test_the_profile_splits_every_step_into_parts_that_add_up(small_checkpoint, tmp_path):
    """Every backend (NumPy, torch float32 and bfloat16), batch 1 and 2: every part was timed (each runs every
    step), the parts fit in the step ("between" is what is left of each round's step, so it is never negative;
    the figures are medians over the rounds, so they need not add up exactly), the tiny-matrix model ran, and
    the report's rows name every measurement; the wrapped functions are the originals again afterwards."""
    originals = (FewRowLinear.__dict__["forward"], F.scaled_dot_product_attention, gpt2_numpy.model.attention,
                 gpt2_numpy.model.Linear.__dict__["__call__"], gpt2_numpy.model.GPT.__dict__["lm_head"])
    results = step_profile.profile(small_checkpoint.path, step_profile.tiny_checkpoint(tmp_path), batches=(1, 2),
                                   steps=3, rounds=2)
    itemsizes = {"numpy": 4, "torch": 4, "torch bfloat16": 2}
    assert set(results) == {(backend, batch) for backend in itemsizes for batch in (1, 2)}
    assert {backend: r["itemsize"] for (backend, _), r in results.items()} == itemsizes
    for key, r in results.items():
        assert all(r[part] > 0 for part in step_profile.PARTS), (key, r)
        assert r["between"] >= 0 and r["tiny step"] > 0, (key, r)
        assert sum(r[p] for p in step_profile.PARTS) <= r["step"] * 1.5, (key, r)  # medians of rounds: no exact sum
    assert originals == (FewRowLinear.__dict__["forward"], F.scaled_dot_product_attention, gpt2_numpy.model.attention,
                         gpt2_numpy.model.Linear.__dict__["__call__"], gpt2_numpy.model.GPT.__dict__["lm_head"])
    config = step_profile.TINY
    lines = step_profile.table(results, config, {1: 1e-4, 2: 2e-4}).splitlines()
    assert len(lines) == 2 + 6 and all(line.count("|") == 10 for line in lines)


def test_the_table_counts_each_backends_weights_in_its_own_dtype():
    """The same times for a float32 and a bfloat16 row: the bfloat16 products read half the bytes, so half the
    GB/s; the float32 figure is GPT-2 124M's block matrices (339.7 MB, the report's count) over 10 ms. The table
    prints one decimal: 0.05 GB/s is its rounding."""
    times = {"step": 0.02, "block products": 0.01, "lm_head": 0.004, "attention": 0.001, "between": 0.005,
             "tiny step": 0.002}
    results = {("torch", 1): {**times, "itemsize": 4}, ("torch bfloat16", 1): {**times, "itemsize": 2}}
    rows = step_profile.table(results, weights.preset("gpt2"), {1: 1e-4}).splitlines()[2:]
    (float32, _), (bfloat16, _) = (map(float, re.findall(r"\(([\d.]+)\)", row)) for row in rows)
    assert abs(float32 - 339.7e6 / 0.01 / 1e9) <= 0.05 + 0.01  # 339.7 is itself rounded to 0.1 MB
    assert abs(bfloat16 - float32 / 2) <= 0.05
