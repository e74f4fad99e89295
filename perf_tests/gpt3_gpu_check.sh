#!/usr/bin/env bash
# The GPU check of GPT-3, in one call of at most ~8 minutes on one GPU:
#   1. tests/models/test_gpt3_gpu.py: megatron-core's fp32, mixed-precision and distributed optimizers load
#      the reference-layout initial checkpoint and resume from their own distributed checkpoints;
#   2. perf_tests/gpt3_layer.py: tokens/s and model TFLOP/s of real-width layers, bf16 and FP8 (TE's where
#      it imports, else torch._scaled_mm's), printed last as a table.
#
#   usage: perf_tests/gpt3_gpu_check.sh
#   environment:
#     PYTHON          interpreter with torch (CUDA) + pytest (default: python3)
#     WHEELS          folder of wheels to install first with --no-deps into a private target, for an image
#                     without megatron-core / mlperf-logging (default: .whl when it exists; see below)
#     OUT             directory for logs (default: perf_tests/results/gpt3_gpu_check_<date>)
#
# For the lent H200 image (Python 3.12, no megatron-core, no mlperf-logging), fetch the pure-Python wheels
# here once and carry `.whl`:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       megatron-core==0.16.1 mlperf-logging==4.1.68 zarr==2.18.7 numcodecs==0.15.2 asciitree==1.0.0 fasteners==0.20
# (numcodecs is a binary wheel: add --platform manylinux_2_17_x86_64 --implementation cp for it.)
#
# Exit status: 0 when the tests passed and the benchmark ran, 1 otherwise, 2 without a GPU.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-perf_tests/results/gpt3_gpu_check_$(date +%Y%m%d_%H%M%S)}"
WHEELS="${WHEELS:-}"
[[ -z "$WHEELS" && -d .whl ]] && WHEELS=.whl
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpt3_gpu_check: torch sees no CUDA device; nothing to check here" >&2
    exit 2
fi
if [[ -n "$WHEELS" ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpt3_site \
        "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="/tmp/gpt3_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
"$PYTHON" -c "import platform, torch, megatron.core as m; print('python', platform.python_version(), 'torch', \
torch.__version__, 'megatron-core', m.__version__, torch.cuda.get_device_name())" > "$OUT/versions.txt" 2>&1

echo "== GPT-3 CUDA tests (limit 300 s) =="
timeout 300 "$PYTHON" -m pytest tests/models/test_gpt3_gpu.py -m gpu -q -p no:cacheprovider > "$OUT/tests.log" 2>&1
tests_rc=$?
grep -E "^(FAILED|ERROR)|passed|failed|skipped" "$OUT/tests.log" | tail -n 10
[[ $tests_rc -eq 124 ]] && echo "tests: TIMED OUT"

echo "== GPT-3 layer stack (limit 150 s) =="
timeout 150 "$PYTHON" perf_tests/gpt3_layer.py --layers 2 --mbs 1 --iters 10 > "$OUT/gpt3_layer.md" 2> "$OUT/gpt3_layer.log"
bench_rc=$?

echo
cat "$OUT/versions.txt"
echo "tests: $(tail -n 1 "$OUT/tests.log") (exit $tests_rc; log $OUT/tests.log)"
echo
if [[ -s "$OUT/gpt3_layer.md" ]]; then cat "$OUT/gpt3_layer.md"; else tail -n 30 "$OUT/gpt3_layer.log"; fi
[[ $tests_rc -eq 0 && $bench_rc -eq 0 ]]
