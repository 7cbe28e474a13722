"""The arithmetic of `python -m benchmarks.report` (ratios, roofline, targets) on made-up measurements whose
expected figures are worked out by hand below; and its rewrite of BENCHMARKS.md. Nothing is timed here.

All the figures are exact in binary or a few roundings away: 1e-12 relative tolerance."""

import json

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
            "torch+compile-bfloat16": runs(120, 120, 120),
            "numpy-float32": runs(45, 50, 40),
            "transformers-float32": runs(20, 20, 20),
            "transformers-bfloat16": runs(60, 60, 60),
        },
        "prefill": {c: {"seconds_median": s} for c, s in [("torch-float32", 1.0), ("torch+compile-float32", 1.0),
                                                           ("torch-bfloat16", 0.5), ("torch+compile-bfloat16", 0.5),
                                                           ("numpy-float32", 1.6), ("transformers-float32", 1.2),
                                                           ("transformers-bfloat16", 0.6)]},
        "rss": {"torch-float32": rss(150, 100, 10), "torch-bfloat16": rss(60, 50, 10),
                "numpy-float32": rss(140, 100, 10)},
        # batch 8: total tokens/s of 8 samples
        "batched": {
            "torch-float32": runs(160, 160, 160),
            "torch+compile-float32": runs(200, 200, 200),
            "torch-bfloat16": runs(270, 270, 270),
            "torch+compile-bfloat16": runs(400, 400, 400),
            "numpy-float32": runs(300, 200, 250),
            "transformers-float32": runs(80, 80, 80),
            "transformers-bfloat16": runs(100, 100, 100),
        },
        "rss_batched": {"torch-float32": rss(150, 100, 20), "torch-bfloat16": rss(100, 50, 20),
                        "numpy-float32": rss(160, 100, 20)},
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
        # batched medians over batch-1 medians: numpy 250 / 45, torch 160 / 40; over transformers': 250 / 80, 160 / 80
        "batch 8 float32: numpy vs its own batch 1": ("5.56x", True),
        "batch 8 float32: torch vs its own batch 1": ("4.00x", False),
        "batch 8 float32: numpy vs transformers num_return_sequences=8": ("3.12x", True),
        "batch 8 float32: torch vs transformers num_return_sequences=8": ("2.00x", False),
        "batch 8 bfloat16: torch vs transformers num_return_sequences=8": ("2.70x", False),
        # limit 1.3 x (weights + KV cache of 8): 156 MiB, 91 MiB, 156 MiB
        "peak RSS while sampling 8 samples, torch-float32": ("150 MiB", True),
        "peak RSS while sampling 8 samples, torch-bfloat16": ("100 MiB", False),
        "peak RSS while sampling 8 samples, numpy-float32": ("160 MiB", False),
    }
    assert "decode vs llama.cpp: numpy float32 / f32" not in verdicts  # no llama.cpp in this run


def test_the_report_sets_each_round_against_llama_cpps_same_round():
    """llama.cpp f32 decodes at 120, 80, 110 tokens/s in the 3 rounds: rounds 1 and 3 are on a fast bus. NumPy's
    45, 50, 40 against f32 gives 0.375, 0.625, 0.364 (median of the fast rounds 0.369, of all 0.375); torch
    bfloat16's 90s against f16's 150, 100, 180 give 0.6, 0.9, 0.5. Prefill: llama.cpp's seconds over ours.
    Batched and prefill rounds are judged on all rounds."""
    results = made_up_results()

    def runs(*values, unit="tokens_per_s"):
        return {f"{unit}_median": sorted(values)[1], f"{unit}_runs": list(values)}

    results["prefill"] = {c: runs(1.0, 1.0, 1.0, unit="seconds") for c in results["decode"]}
    results["llama_cpp"] = {
        "decode": {"llama.cpp-float32": runs(120, 80, 110), "llama.cpp-float16": runs(150, 100, 180)},
        "batched": {"llama.cpp-float32": runs(400, 400, 400), "llama.cpp-float16": runs(500, 500, 500)},
        "prefill": {"llama.cpp-float32": runs(0.8, 0.9, 1.0, unit="seconds"),
                    "llama.cpp-float16": runs(2.0, 2.0, 2.0, unit="seconds")},
        "info": {},
    }
    results["settings"] = {"prompt_tokens": 8, "new_tokens": 128, "prefill_tokens": 1024, "batched": 8, "reps": 3}
    results["decode_round_bandwidth_GBps"] = [60.0, 40.0, 55.0]
    derived = report.evaluate(results)
    vl = derived["vs_llama_cpp"]
    numpy_decode = vl["decode"]["numpy-float32"]
    assert numpy_decode["per_round"] == pytest.approx([45 / 120, 50 / 80, 40 / 110], rel=1e-12)
    assert numpy_decode["fast"] == pytest.approx((45 / 120 + 40 / 110) / 2, rel=1e-12)  # median of two
    assert numpy_decode["all"] == pytest.approx(45 / 120, rel=1e-12)
    assert numpy_decode["judged"] == numpy_decode["fast"] and numpy_decode["fast_rounds"] == 2
    assert vl["decode"]["torch-bfloat16"]["per_round"] == pytest.approx([0.6, 0.9, 0.5], rel=1e-12)
    assert vl["batched"]["numpy-float32"]["judged"] == pytest.approx(250 / 400, rel=1e-12)  # all rounds
    assert vl["prefill"]["torch-float32"]["judged"] == pytest.approx(0.9, rel=1e-12)  # 0.9 s / 1.0 s
    assert vl["prefill"]["torch-bfloat16"]["judged"] == pytest.approx(2.0, rel=1e-12)
    verdicts = {t["name"]: (t["measured"], t["met"]) for t in derived["targets"]}
    assert verdicts["decode vs llama.cpp: numpy float32 / f32"] == ("0.37x", False)
    assert verdicts["decode vs llama.cpp: torch bfloat16 / f16"] == ("0.55x", False)  # fast rounds: 0.6, 0.5
    assert verdicts["decode vs llama.cpp: torch --compile bfloat16 / f16"] == ("0.73x", False)  # 120/150, 120/180
    assert verdicts["decode vs llama.cpp: torch --compile float32 / f32"] == ("0.33x", False)  # 38/120, 38/110
    assert verdicts["prefill vs llama.cpp: torch float32 / f32"] == ("0.90x", True)
    assert "llama.cpp-float16" in "\n".join(report.llama_cpp_section(results, derived))


def test_without_fast_rounds_every_round_is_judged():
    results = made_up_results()
    results["llama_cpp"] = {op: {c: {"tokens_per_s_runs": [50, 50, 50], "tokens_per_s_median": 50,
                                     "seconds_runs": [1, 1, 1], "seconds_median": 1}
                                 for c in ("llama.cpp-float32", "llama.cpp-float16")}
                            for op in ("decode", "batched", "prefill")}
    results["prefill"] = {c: {"seconds_median": 1, "seconds_runs": [1, 1, 1]} for c in results["decode"]}
    decode = report.evaluate(results)["vs_llama_cpp"]["decode"]["numpy-float32"]
    assert decode["fast"] is None and decode["fast_rounds"] == 0
    assert decode["judged"] == decode["all"] == pytest.approx(45 / 50, rel=1e-12)


def test_the_report_rewrites_only_its_own_section_of_benchmarks_md(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# Benchmarks\n\nby hand, before\n\n{report.MARK_BEGIN}\nold figures\n{report.MARK_END}\n\n"
                    "by hand, after\n")
    report.write_markdown("new figures", path)
    assert path.read_text() == (f"# Benchmarks\n\nby hand, before\n\n{report.MARK_BEGIN}\nnew figures\n"
                                f"{report.MARK_END}\n\nby hand, after\n")


def test_the_vocabulary_given_to_llama_cpps_converter_is_gpt2s():
    """benchmarks/llama_cpp.py rebuilds vocab.json and merges.txt from the tiktoken rank file: 50257 ids as
    tiktoken numbers them, and 50000 merges in rank order, each joining two tokens of lower rank into the
    token of the next rank (so BPE with these merges splits text as tiktoken does)."""
    from benchmarks.llama_cpp import byte_level_vocabulary

    vocab, merges = byte_level_vocabulary()
    assert len(vocab) == 50257 and sorted(vocab.values()) == list(range(50257))
    assert vocab["<|endoftext|>"] == 50256 and vocab["Ġthe"] == 262  # " the", its space as GPT-2's Ġ
    assert len(merges) == 50000
    for rank, merge in enumerate(merges, start=256):
        left, right = merge.split(" ")
        assert vocab[left + right] == rank and vocab[left] < rank and vocab[right] < rank, merge


def test_the_gpu_targets_are_judged_from_the_gpu_runs_ratios():
    """Issue 10's GPU targets from benchmarks.gpu's results: 124M's ratios against transformers (10x eager, 1.3x
    static cache compiled) and XL's fraction of the HBM roofline (60%); only the shapes that ran."""
    from benchmarks import gpu

    results = {"dtype": "bfloat16", "shapes": {"124M": {"compiled_vs_transformers_eager": 10.0, "compiled_vs_transformers_static_compiled": 1.29},
                          "XL": {"fraction_of_roofline": {"ours --compile": 0.62}}}}
    assert [(measured, met) for _, _, measured, met in gpu.targets(results)] == [("10.0x", True), ("1.29x", False),
                                                                                  ("62%", True)]
    del results["shapes"]["124M"]
    assert [measured for _, _, measured, _ in gpu.targets(results)] == ["62%"]
    assert gpu.targets({**results, "dtype": "float32"}) == []  # the targets are bfloat16's


def test_the_gpu_benchmark_merges_shapes_of_one_run_and_a_cpu_smoke_run_writes_nothing(tmp_path, monkeypatch):
    """benchmarks/gpu_check.sh runs one shape per process with --merge: the file ends with every shape of that
    device, dtype and torch, and a run of another dtype replaces it. Without --out, a CPU run writes nothing
    (it would otherwise replace the committed GPU results). The measurement itself is stubbed: nothing is timed."""
    from benchmarks import gpu

    monkeypatch.setattr(gpu, "measure", lambda shape, *args: {"measured": shape})
    monkeypatch.setattr(gpu, "markdown", lambda results: "")
    out = tmp_path / "gpu_results.json"
    gpu.main(["--device", "cpu", "--shapes", "tiny", "--out", str(out)])
    first = json.loads(out.read_text())
    first["shapes"] = {"XL": {"measured": "XL"}}
    out.write_text(json.dumps(first))
    gpu.main(["--device", "cpu", "--shapes", "tiny", "--out", str(out), "--merge"])
    assert json.loads(out.read_text())["shapes"] == {"XL": {"measured": "XL"}, "tiny": {"measured": "tiny"}}
    gpu.main(["--device", "cpu", "--shapes", "tiny", "--out", str(out), "--merge", "--dtype", "float32"])
    assert json.loads(out.read_text())["shapes"] == {"tiny": {"measured": "tiny"}}  # another dtype: not merged
    committed = gpu.RESULTS.read_text()
    gpu.main(["--device", "cpu", "--shapes", "tiny"])
    assert gpu.RESULTS.read_text() == committed
