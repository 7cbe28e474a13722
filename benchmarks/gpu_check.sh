#!/usr/bin/env bash
# Everything this project checks on a CUDA GPU, in one go (a lent GPU's time is short). Stages, in order:
#   tests         tests/test_cuda.py and the CUDA case of test_compiled_decode_step.py (skipped without a GPU)
#   bench-124M    benchmarks/gpu.py on GPT-2 124M's shape: decode batch 1 and 8, prefill, HBM roofline
#   compare-124M  compare.py --device cuda, float32 and bfloat16, on a random checkpoint of 124M's shape
#   bench-XL      the same benchmark on GPT-2 XL's shape (1.5B)
#   compare-XL    compare.py --device cuda on a random XL-shape checkpoint
# Usage: bash benchmarks/gpu_check.sh OUTDIR [STAGE ...]   (default: every stage)
# Uses the python3 on PATH, or $PYTHON: one with a CUDA build of torch, transformers, tiktoken, safetensors,
# pytest and hypothesis (the project's own environment, or a GPU image that has them). Each stage has a time
# limit, so one that hangs leaves the others theirs. OUTDIR gets log.txt and gpu_results.json (every shape
# benchmarked), which the report reads once copied to benchmarks/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_check.sh OUTDIR [STAGE ...]}
shift
stages=${*:-tests bench-124M compare-124M bench-XL compare-XL}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
exec > >(tee -a "$out/log.txt") 2>&1

run() {  # run NAME SECONDS COMMAND...: one stage, its exit status and time on one line
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name (limit $limit s)"
    timeout "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - start)) s"
}

checkpoint() {  # checkpoint SHAPE: a random GPT-2 checkpoint of that shape, written by transformers, once
    local dir=/tmp/gpt2-check-$1
    [ -f "$dir/config.json" ] || "$py" - "$1" "$dir" >&2 <<'EOF' || return 1
import sys
import torch
from benchmarks.gpu import SHAPES, theirs
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # on a GPU: seconds, not a minute, for XL
theirs(SHAPES[sys.argv[1]], device, torch.float32, static_compiled=False).save_pretrained(sys.argv[2])
EOF
    echo "$dir"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
"$py" -c "import sys, torch, transformers, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__)"

for stage in $stages; do
    case $stage in
        tests) run tests 240 "$py" -m pytest tests/test_cuda.py -q -p no:cacheprovider \
                   "tests/test_compiled_decode_step.py::test_one_graph_serves_every_step_of_every_generation[cuda]" ;;
        bench-*) run "$stage" 300 "$py" -m benchmarks.gpu --shapes "${stage#bench-}" --out "$out/gpu_results.json" --merge ;;
        compare-*)
            ckpt=$(checkpoint "${stage#compare-}") || { echo "=== $stage: no checkpoint"; continue; }
            for dtype in float32 bfloat16; do
                run "$stage-$dtype" 120 "$py" compare.py --init-from "$ckpt" --device cuda --dtype "$dtype"
            done ;;
        *) echo "=== unknown stage $stage" ;;
    esac
done
