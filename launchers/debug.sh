#!/usr/bin/env bash
# Run a benchmark's `debug` flavour to its target on this machine, on the synthetic data it writes first,
# then check the MLPerf log with the MLCommons compliance checker.
#   usage: launchers/debug.sh BENCHMARK [NPROC] [section.field=value ...]
#   e.g.   launchers/debug.sh resnet          one process
#          launchers/debug.sh resnet 2        torchrun, 2 processes (gloo on CPU, nccl on GPUs)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCHMARK="${1:?usage: launchers/debug.sh BENCHMARK [NPROC] [overrides...]}"
shift
NPROC=1
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then NPROC="$1"; shift; fi

cd "$REPO"
source launchers/setup_venv.sh
RUNDIR="${RUNDIR:-$REPO/runs/${BENCHMARK}_debug_$(date +%Y%m%d_%H%M%S)}"
if [[ -n "${DATADIR:-}" ]]; then
    # The user's own data: read, never written into (a synthetic set mixed into it would spoil both).
    [[ -d "$DATADIR" ]] || { echo "debug.sh: DATADIR=$DATADIR is not a directory" >&2; exit 2; }
else
    DATADIR="$REPO/data/${BENCHMARK}_debug"
    python -m runtime.synthesize "$BENCHMARK" --flavour debug --out "$DATADIR"
fi

if [[ "$NPROC" -gt 1 ]]; then
    launch=(torchrun --standalone --nproc_per_node="$NPROC")
else
    launch=(python)
fi
status=0
"${launch[@]}" -m runtime.train "$BENCHMARK" --flavour debug --data-dir "$DATADIR" --run-dir "$RUNDIR" "$@" \
    || status=$?
echo "run directory: $RUNDIR (mlperf_log.txt, eval_curve.png, summary.txt, run_config.json)"
checker=0
# The MLCommons checker (training 4.0.0 rules), accepting only the named defect of those rules (runtime/compliance.py)
python -m runtime.compliance "$RUNDIR/mlperf_log.txt" || checker=$?
# Non-zero if the run missed its target or the log is not compliant.
[[ "$status" -ne 0 ]] && exit "$status"
exit "$checker"
