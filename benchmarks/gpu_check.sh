#!/usr/bin/env bash
# One command on a GPU machine (under 8 minutes on one GPU), printing one table:
#   1. the gpu-marked tests (tests/gpu): Triton kernels vs their PyTorch twins on CUDA for
#      fp32/bf16/fp16 and odd shapes, and a tiny pool grown and scored on CUDA vs CPU;
#   2. benchmarks/bench_kernels.py --cuda-only: merge GB/s as a fraction of the device's
#      memory bandwidth, fused NLL peak memory vs the labels= path at a 128K vocabulary;
#   3. benchmarks/bench_eval.py --device cuda: mixtures per minute vs merge-save-reload.
# Without a CUDA device it runs the CPU-safe part (the gpu tests are collected and skip) and
# says in one line that the rest was skipped. Exit status: 0 when nothing failed.
#
# Usage: bash benchmarks/gpu_check.sh        (PYTHON=... picks the interpreter)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# The kernels must compile for the device, not run under the CPU interpreter (.ci/run sets it).
unset TRITON_INTERPRET
ROWS=()
FAILED=0

# step NAME LIMIT_S SUMMARY_REGEX CMD...: run CMD with a time limit; keep the lines matching
# SUMMARY_REGEX as the table's result column (the full log stays in $LOGS/NAME.log).
step() {
    local name=$1 limit=$2 pattern=$3
    shift 3
    local start=$SECONDS status
    if timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1; then
        status=ok
    else
        status="FAILED (exit $?)"
        FAILED=1
    fi
    local took=$((SECONDS - start))
    local first=1
    while IFS= read -r line; do
        if [ $first = 1 ]; then
            ROWS+=("$(printf '%-14s %-16s %5ss  %s' "$name" "$status" "$took" "$line")")
            first=0
        else
            ROWS+=("$(printf '%-14s %-16s %5s   %s' "" "" "" "$line")")
        fi
    done < <(grep -E "$pattern" "$LOGS/$name.log" | sed -e 's/[[:space:]]\+/ /g' | cut -c1-110)
    if [ $first = 1 ]; then
        ROWS+=("$(printf '%-14s %-16s %5ss  %s' "$name" "$status" "$took" "(see $LOGS/$name.log)")")
    fi
}

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$HAS_CUDA" = 1 ]; then
    DEVICE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
else
    DEVICE="none"
fi
echo "gpu_check: CUDA device: $DEVICE; logs in $LOGS"

step gpu-tests 300 '(passed|failed|skipped|error)' \
    "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider
if [ "$HAS_CUDA" = 1 ]; then
    step bench-kernels 200 '^(merge 8 x|score T=|CUDA section)' \
        "$PY" benchmarks/bench_kernels.py --cuda-only
    step bench-eval 200 '^ *[0-9]+ +[0-9.]+ |agree on every' \
        "$PY" benchmarks/bench_eval.py --device cuda
else
    echo "gpu_check: no CUDA device here - bench_kernels.py (CUDA) and bench_eval.py --device cuda skipped; run this on a GPU machine"
    ROWS+=("$(printf '%-14s %-16s %5s   %s' bench-kernels skipped - 'no CUDA device')")
    ROWS+=("$(printf '%-14s %-16s %5s   %s' bench-eval skipped - 'no CUDA device')")
fi

RULE=$(printf '%.0s-' $(seq 1 100))
echo "$RULE"
printf '%-14s %-16s %6s  %s\n' step status time result
echo "$RULE"
for r in "${ROWS[@]}"; do
    echo "$r"
done
echo "$RULE"
exit $FAILED
