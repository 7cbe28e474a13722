"""Speed and memory of the two backends against transformers, on a random GPT-2 124M.

    uv run pytest benchmarks --benchmark-only     # pytest-benchmark: components and end-to-end steps
    uv run python -m benchmarks.report            # the targets of BENCHMARKS.md, rewritten with the results

Neither runs in the default `uv run pytest` (its testpaths is tests/). Both use the same random checkpoint
(benchmarks.common.checkpoint), written once by transformers, so no network is needed.
"""
