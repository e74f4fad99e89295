# The R-GAT debug flavour on one CPU node: 2 tasks (the "GPUs") x 16 seeds = GBS 32, synthetic IGBH.
#   source launchers/gnn/config_CPU_01x02x16.sh
#   python -m runtime.synthesize gnn --flavour debug --out data/gnn_debug
#   DATADIR=$PWD/data/gnn_debug LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/gnn.sub
# With CONT unset, run.sub runs on the host with the repository's .venv.

## DL params
export BENCHMARK=${BENCHMARK:-gnn}
export FLAVOUR=${FLAVOUR:-debug}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: the debug run takes seconds; shared machines are slower.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-10}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
