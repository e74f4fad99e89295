#!/usr/bin/env bash
# Train-step throughput per GPU of each benchmark at its real per-GPU shape, ours beside the library model of the
# same shape in the same run (each script's own comparison), one time limit per benchmark; a summary table and
# every script's own tables are printed last. One GPU, the cases one after another.
#
#   usage: perf_tests/benchmarks_gpu_check.sh [--dry-run]
#     --dry-run   no GPU needed: every script at tiny shapes on the CPU (the flags, the scripts and the table;
#                 the cases run at once, DRY_JOBS at a time)
#   environment:
#     PYTHON      interpreter of the project's venv (default: python3); runs offline
#     OUT         directory for the logs and the table (default: perf_tests/results/benchmarks_gpu_check_<date>)
#     TIMEOUT_S   limit per benchmark (default 150; 60 in a dry run)
#     ONLY        comma-separated benchmarks to run (default: all of unet3d,resnet,ssd,stable_diffusion,gnn)
#     DRY_JOBS    dry-run cases at once (default 2), each on one CPU thread
#
# Per-GPU shapes (the DGX H100 flavours, batch per GPU = GBS / GPUs): unet3d 7 x 128^3 bf16 NDHWC (dgxh100_1x8,
# with NVIDIA's 72.3 / 76.4 samples/s per H100 / H200 as the baseline), resnet 408 x 224^2 (dgxh100_1x8), ssd
# 32 x 800^2 (dgxh100_1x8), stable_diffusion 64 x 64^2 latents bf16 (dgxh100_1x8, the flags of its docstring),
# gnn the `medium` size. A script without a --device flag is CPU-only: it is reported as skipped on a GPU (and
# still run in the dry run, so that its flags stay checked).
#
# Exit status: 0 when every case that could run ran, 1 otherwise, 2 without a GPU (not a dry run).
# Not `set -e`: one failing benchmark must leave the others to run and the table to be printed.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
if [[ $# -gt 0 && $DRY_RUN -eq 0 ]]; then
    echo "usage: perf_tests/benchmarks_gpu_check.sh [--dry-run]" >&2
    exit 2
fi
OUT="${OUT:-perf_tests/results/benchmarks_gpu_check_$(date +%Y%m%d_%H%M%S)}"
TIMEOUT_S="${TIMEOUT_S:-$([[ $DRY_RUN -eq 1 ]] && echo 60 || echo 150)}"
ONLY="${ONLY:-unet3d,resnet,ssd,stable_diffusion,gnn}"
DRY_JOBS="${DRY_JOBS:-2}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# Dry-run cases share the CPU: one intra-op thread each, so that DRY_JOBS of them do not oversubscribe the cores.
[[ $DRY_RUN -eq 1 ]] && export OMP_NUM_THREADS=1

# name | script | real per-GPU shape on CUDA | tiny shape for the dry run (CPU)
CASES=(
    "unet3d|unet3d_step.py|--batch 7 --crop 128 --roi 128 --modes bf16 --volume 256,320,320 --window-batch 4 --warmup 3 --iters 10|--filters 4,8,8 --crop 16 --roi 16 --volume 20,24,24 --batch 2 --modes bf16 --window-batch 2 --warmup 0 --iters 1"
    "resnet|resnet_step.py|--batch 408 --size 224 --modes bf16,channels_last --warmup 3 --iters 10|--batch 2 --size 32 --modes bf16 --warmup 0 --iters 1"
    "ssd|ssd_step.py|--size 800 --batch 32 --modes channels_last,bf16 --warmup 2 --iters 5|--size 64 --batch 1 --classes 8 --modes fp32 --warmup 0 --iters 1"
    "stable_diffusion|stable_diffusion_step.py|--channels 320 --latent 64 --batch 64 --precision bf16 --warmup 2 --iters 5|--channels 64 --latent 8 --batch 1 --warmup 0 --iters 1"
    "gnn|gnn_step.py|--sizes medium --warmup 3 --iters 10|--sizes debug --batches 1 --warmup 0 --iters 1"
)

if [[ $DRY_RUN -eq 0 ]]; then
    if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "benchmarks_gpu_check: torch sees no CUDA device (use --dry-run on a CPU machine)" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$OUT/gpu.txt" 2>&1 || true
fi

selected() { [[ ",$ONLY," == *",$1,"* ]]; }

# One case: its log, its exit status (or "skipped: why") and its seconds, under $OUT/<name>.{log,status,seconds}.
run_case() {
    local name="$1" script="$2" args="$3"
    local log="$OUT/$name.log"
    local device_args=()
    if [[ $DRY_RUN -eq 0 ]]; then
        if ! "$PYTHON" "perf_tests/$script" --help 2>/dev/null | grep -q -- "--device"; then
            echo "skipped: $script has no --device (CPU only)" > "$OUT/$name.status"
            echo 0 > "$OUT/$name.seconds"
            return
        fi
        device_args=(--device cuda)
    fi
    local start=$SECONDS
    # shellcheck disable=SC2086  # the shape flags are words on purpose
    timeout "$TIMEOUT_S" "$PYTHON" "perf_tests/$script" $args "${device_args[@]}" > "$log" 2>&1
    local rc=$?
    echo $((SECONDS - start)) > "$OUT/$name.seconds"
    case $rc in
        0) echo ok > "$OUT/$name.status" ;;
        124) echo "timeout after ${TIMEOUT_S} s" > "$OUT/$name.status" ;;
        *) echo "failed (exit $rc)" > "$OUT/$name.status" ;;
    esac
}

names=()
for case in "${CASES[@]}"; do
    IFS="|" read -r name script real tiny <<< "$case"
    selected "$name" || continue
    names+=("$name")
    if [[ $DRY_RUN -eq 1 ]]; then
        while [[ $(jobs -rp | wc -l) -ge $DRY_JOBS ]]; do wait -n; done
        echo "== $name (dry run, CPU): perf_tests/$script $tiny"
        run_case "$name" "$script" "$tiny" &
    else
        echo "== $name (CUDA, limit ${TIMEOUT_S} s): perf_tests/$script $real --device cuda"
        run_case "$name" "$script" "$real"
    fi
done
wait

if [[ ${#names[@]} -eq 0 ]]; then
    echo "benchmarks_gpu_check: ONLY=$ONLY names no benchmark" >&2
    exit 2
fi

failed=0
{
    echo "# benchmarks_gpu_check $([[ $DRY_RUN -eq 1 ]] && echo "(dry run, CPU, tiny shapes)" || head -n 2 "$OUT/gpu.txt" | tail -n 1)"
    echo
    echo "| benchmark | status | seconds |"
    echo "|---|---|---|"
    for name in "${names[@]}"; do
        status="$(cat "$OUT/$name.status" 2>/dev/null || echo "no status")"
        echo "| $name | $status | $(cat "$OUT/$name.seconds" 2>/dev/null || echo -) |"
        [[ "$status" == ok || "$status" == skipped:* ]] || failed=1
    done
    for name in "${names[@]}"; do
        [[ -s "$OUT/$name.log" ]] || continue
        echo
        echo "## $name"
        # The script's own tables and its baseline lines; the last lines of a log that has none (a failure).
        if grep -qE '^\|' "$OUT/$name.log"; then
            grep -E '^(\||baseline|\(not comparable)' "$OUT/$name.log"
        else
            tail -n 15 "$OUT/$name.log"
        fi
    done
} > "$OUT/table.md"
cat "$OUT/table.md"
exit $failed
