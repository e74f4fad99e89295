#!/usr/bin/env bash
# The GPU check of kernels/, in one call of at most ~8 minutes: the kernel tests on CUDA (GPU-only tests
# included, Triton path forced; one pytest process per test file, TEST_JOBS at a time, so that Triton's
# compilations overlap; tests/kernels/test_backends.py also runs the real apex group norm and focal loss
# through our seams when apex is usable), every kernel benchmark with apex's op timed beside ours where apex
# has it (the NGC image's apex; a row says why not otherwise), then BERT-large train steps (sequences/s per
# GPU, ours and HF's); the tables are printed last.
#
#   usage: perf_tests/gpu_check.sh [--dry-run]
#     --dry-run   no GPU needed: check the test collection and run the benchmarks' CPU smoke mode
#   environment:
#     PYTHON          interpreter with torch + triton + pytest (default: python3); runs offline
#     OUT             directory for logs and the table (default: perf_tests/kernels/results/gpu_check_<date>)
#     TEST_TIMEOUT_S  limit for the test run (default 240)
#     TEST_JOBS       test files run at once (default 4)
#     BERT_TIMEOUT_S  limit for the BERT step benchmark (default 150)
#     BENCH_BUDGET_S  the benchmarks start no new case after this (default 200); hard limit +60 s
#
# Exit status: 0 when the tests passed and every benchmark case ran, 1 otherwise, 2 without a GPU.
# Not `set -e`: a failing test run must still leave the benchmarks to run and the table to be printed.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-perf_tests/kernels/results/gpu_check_$(date +%Y%m%d_%H%M%S)}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-240}"
TEST_JOBS="${TEST_JOBS:-4}"
BERT_TIMEOUT_S="${BERT_TIMEOUT_S:-150}"
BENCH_BUDGET_S="${BENCH_BUDGET_S:-200}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if [[ "${1:-}" == "--dry-run" ]]; then
    echo "dry run: tests would run as"
    echo "  MLPERF_KERNELS=triton timeout ${TEST_TIMEOUT_S} $PYTHON -m pytest tests/kernels -m 'gpu or not gpu' -q"
    echo "collecting them (CPU):"
    "$PYTHON" -m pytest tests/kernels -m "gpu or not gpu" --collect-only -q -p no:cacheprovider | tail -n 1
    echo "benchmark smoke run (CPU, Triton interpreter, tiny shapes):"
    timeout 300 "$PYTHON" perf_tests/kernels/bench_kernels.py --smoke --out "$OUT/kernels_smoke.md" \
        > "$OUT/bench.log" 2>&1
    rc=$?
    cat "$OUT/kernels_smoke.md" 2>/dev/null || tail -n 20 "$OUT/bench.log"
    # The apex baseline must be in the table, with its reason where apex cannot run (here: no CUDA).
    if ! grep -q "| apex ms | x apex |" "$OUT/kernels_smoke.md" 2>/dev/null \
        || ! grep -q "apex not importable" "$OUT/kernels_smoke.md"; then
        echo "dry run: the table has no apex column or no reason for its missing apex timings"
        rc=1
    fi
    exit $rc
fi

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device (use --dry-run on a CPU machine)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$OUT/gpu.txt" 2>&1 || true
"$PYTHON" - > "$OUT/versions.txt" 2>&1 <<'PY'
import platform, torch, triton
print(f"python {platform.python_version()} torch {torch.__version__} triton {triton.__version__}")
print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())
from kernels import backends
print("apex:", backends.apex_status())
PY

echo "== kernel tests on CUDA (${TEST_JOBS} files at a time, limit ${TEST_TIMEOUT_S} s) =="
unset TRITON_INTERPRET
export PYTHON OUT
# One process per file: each exits with pytest's status, written beside its log.
ls tests/kernels/test_*.py | timeout "$TEST_TIMEOUT_S" xargs -P "$TEST_JOBS" -I{} bash -c \
    'f={}; n=$(basename "$f" .py); MLPERF_KERNELS=triton "$PYTHON" -m pytest "$f" -m "gpu or not gpu" -q \
         -p no:cacheprovider > "$OUT/tests_$n.log" 2>&1; echo $? > "$OUT/tests_$n.rc"'
[[ $? -eq 124 ]] && echo "tests: TIMED OUT after ${TEST_TIMEOUT_S} s"
tests_rc=0
: > "$OUT/tests.log"
for f in tests/kernels/test_*.py; do
    n=$(basename "$f" .py)
    rc=$(cat "$OUT/tests_$n.rc" 2>/dev/null || echo "not finished")
    echo "$n: $(tail -n 1 "$OUT/tests_$n.log" 2>/dev/null) (exit $rc)" >> "$OUT/tests.log"
    grep -E "^(FAILED|ERROR)" "$OUT/tests_$n.log" 2>/dev/null | head -n 10
    [[ "$rc" == 0 ]] || tests_rc=1
done

echo "== kernel benchmarks (budget ${BENCH_BUDGET_S} s) =="
timeout $((BENCH_BUDGET_S + 60)) "$PYTHON" perf_tests/kernels/bench_kernels.py --budget-s "$BENCH_BUDGET_S" \
    --out "$OUT/kernels.md" > "$OUT/bench.log" 2>&1
bench_rc=$?
[[ $bench_rc -eq 124 ]] && echo "benchmarks: TIMED OUT (see $OUT/bench.log)"

echo "== BERT-large train steps (limit ${BERT_TIMEOUT_S} s) =="
# NVIDIA's 1x8 shape per GPU: 48 packed rows of 512 tokens, 76 predictions; ours against HF's BertForPreTraining.
timeout "$BERT_TIMEOUT_S" "$PYTHON" perf_tests/bert_step.py --device cuda --hidden 1024 --layers 24 --heads 16 \
    --seq 512 --predictions 76 --batch 48 --warmup 3 --iters 10 --modes bf16_packed > "$OUT/bert.md" 2>&1
bert_rc=$?

echo
cat "$OUT/versions.txt"
echo "tests (exit $tests_rc; logs $OUT/tests_*.log):"
cat "$OUT/tests.log"
echo "benchmarks: exit $bench_rc (log $OUT/bench.log); BERT steps: exit $bert_rc"
echo
if [[ -s "$OUT/kernels.md" ]]; then
    cat "$OUT/kernels.md"
else
    echo "no benchmark table; last lines of $OUT/bench.log:"
    tail -n 30 "$OUT/bench.log"
fi
echo
cat "$OUT/bert.md"
[[ $tests_rc -eq 0 && $bench_rc -eq 0 && $bert_rc -eq 0 ]]
