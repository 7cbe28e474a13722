"""The arithmetic of `python -m benchmarks.report` (ratios, roofline, targets) on made-up measurements whose
expected figures are worked out by hand below; and its rewrite of BENCHMARKS.md. Nothing is timed here.

All the figures are exact in binary or a few roundings away: 1e-12 relative tolerance."""

import pytest

from benchmarks import report

MIB = 2**20


def made_up_results():
    """float32 weights of 500 MB a token (bfloat16: 250 MB); the best bandwidth of the run is 50 GB/s, so the
    rooflines are 100 and 200 tokens/s; three decoding rounds at 25, 50 and 100 GB/s."""
    def runs(*values):
        return {"tokens_per_s_median": sorted(values)[1], "tokens_per_s_runs": list(values)}

    def rss(used_mib, weight_mib, kv_mib):
        return {"baseline_kib": 1000, "peak_kib": 1000 + used_mib * 1024, "weight_bytes": weight_mib * MIB,
                "kv_cache_bytes": kv_mib * MIB}

    return {
        "bytes_per_token": {"float32": {"matrices": 400e6, "wte": 100e6}, "bfloat16": {"matrices": 250e6}},
        "bandwidth_GBps": {"sum": 30.0, "x @ W": 50.0},
        "decode_round_bandwidth_GBps": [25.0, 50.0, 100.0],
        "decode": {
            "torch-float32": runs(40, 40, 40),
            "torch+compile-float32": runs(38, 38, 38),
            "torch-bfloat16": runs(90, 90, 90),
            "numpy-float32": runs(45, 50, 40),
            "transformers-float32": runs(20, 20, 20),
            "transformers-bfloat16": runs(60, 60, 60),
        },
        "prefill": {c: {"seconds_median": s} for c, s in [("torch-float32", 1.0), ("torch+compile-float32", 1.0),
                                                           ("torch-bfloat16", 0.5),
                                                           ("numpy-float32", 1.6), ("transformers-float32", 1.2),
                                                           ("transformers-bfloat16", 0.6)]},
        "rss": {"torch-float32": rss(150, 100, 10), "torch-bfloat16": rss(60, 50, 10),
                "numpy-float32": rss(140, 100, 10)},
    }


def test_the_report_derives_ratios_rooflines_and_verdicts():
    derived = report.evaluate(made_up_results())
    assert derived["bandwidth_GBps"] == 50.0  # the best kernel of the run
    assert derived["roofline_tokens_per_s"] == pytest.approx({"float32": 100.0, "bfloat16": 200.0}, rel=1e-12)
    # median tokens/s over the roofline: 40 / 100, 45 / 100 (NumPy's median run is 45)
    assert derived["fraction_of_roofline"]["torch-float32"] == pytest.approx(0.40, rel=1e-12)
    assert derived["fraction_of_roofline"]["numpy-float32"] == pytest.approx(0.45, rel=1e-12)
    # each run against its own round: NumPy 45 * 500 MB / 25 GB/s = 0.9, 50 / 100 = 0.5, 40 / 200 = 0.2
    assert derived["fraction_of_round_roofline"]["numpy-float32"] == pytest.approx(0.5, rel=1e-12)
    assert derived["decode_vs_transformers"]["torch-bfloat16"] == pytest.approx(1.5, rel=1e-12)
    assert derived["prefill_vs_transformers"]["numpy-float32"] == pytest.approx(0.75, rel=1e-12)  # 1.2 s / 1.6 s
    verdicts = {t["name"]: (t["measured"], t["met"]) for t in derived["targets"]}
    assert verdicts == {
        "torch float32 decode vs transformers float32 generate": ("2.00x", True),
        "torch --compile float32 decode vs eager torch float32": ("0.95x", False),  # 38 / 40
        "torch bfloat16 decode vs transformers bfloat16 generate": ("1.50x", True),  # the bound itself is met
        "numpy float32 decode vs transformers float32 generate": ("2.25x", True),
        "torch float32 decode, fraction of the roofline": ("40%", False),
        "numpy float32 decode, fraction of the roofline": ("45%", False),
        "prefill 1024 tokens: torch float32 vs transformers forward": ("1.20x", True),
        "prefill 1024 tokens: numpy float32 vs transformers forward": ("0.75x", False),
        # limit 1.3 x weights + KV cache: 140 MiB, 75 MiB, 140 MiB
        "peak RSS while sampling, torch-float32": ("150 MiB", False),
        "peak RSS while sampling, torch-bfloat16": ("60 MiB", True),
        "peak RSS while sampling, numpy-float32": ("140 MiB", True),
    }


def test_the_report_rewrites_only_its_own_section_of_benchmarks_md(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nby hand, before\n\n{report.MARK_BEGIN}\nold figures\n{report.MARK_END}\n\n"
                    "by hand, after\n")
    report.write_markdown("new figures", path)
    assert path.read_text() == (f"# Benchmarks\n\nby hand, before\n\n{report.MARK_BEGIN}\nnew figures\n"
                                f"{report.MARK_END}\n\nby hand, after\n")
