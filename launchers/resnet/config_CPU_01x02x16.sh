# The ResNet debug flavour on one CPU node: 2 tasks (the "GPUs") x 16 images = GBS 32, synthetic data.
# This is what the launcher tests submit to the local Slurm (tests/infra/start_slurm.sh):
#   source launchers/resnet/config_CPU_01x02x16.sh
#   python -m runtime.synthesize resnet --flavour debug --out data/resnet_debug
#   DATADIR=$PWD/data/resnet_debug LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/resnet.sub
# With CONT unset, run.sub runs on the host with the repository's .venv.

## DL params
export BENCHMARK=${BENCHMARK:-resnet}
export FLAVOUR=${FLAVOUR:-debug}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: the debug run takes under a minute on 2 idle cores; shared machines are slower.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-10}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
