# The RetinaNet debug flavour on one CPU node: 2 tasks (the "GPUs") x 8 images = GBS 16, synthetic data.
#   source launchers/ssd/config_CPU_001x02x008.sh
#   python -m runtime.synthesize ssd --flavour debug --out data/ssd_debug
#   DATADIR=$PWD/data/ssd_debug LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/ssd.sub
# With CONT unset, run.sub runs on the host with the repository's .venv.

## DL params
export BENCHMARK=${BENCHMARK:-ssd}
export FLAVOUR=${FLAVOUR:-debug}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: a few minutes on 2 idle cores; shared machines are slower.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-20}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
