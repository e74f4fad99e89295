# ResNet-50 on eight DGX H100: 64 GPUs x 51 images = GBS 3264, the same RCP point as one node, so the
# same hyperparameters (models/resnet/config.py, flavour dgxh100_8x8).
#   source launchers/resnet/config_DGXH100_08x08x51.sh
#   CONT=<image> DATADIR=/lustre/imagenet LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/resnet.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-resnet}
export FLAVOUR=${FLAVOUR:-dgxh100_8x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-8}
# Minutes per run: about 3 timed (NVIDIA v4.0 reaches 2.5 min on 64 H100 at a larger batch) + up to 10 of
# untimed init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-15}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
