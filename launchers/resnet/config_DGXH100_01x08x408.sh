# ResNet-50 on one DGX H100: 8 GPUs x 408 images = GBS 3264, an RCP point (35.15 epochs at lr 10.5).
#   source launchers/resnet/config_DGXH100_01x08x408.sh
#   CONT=<image> DATADIR=/lustre/imagenet LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/resnet.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params: the typed recipe (models/resnet/config.py), never a flag string
export BENCHMARK=${BENCHMARK:-resnet}
export FLAVOUR=${FLAVOUR:-dgxh100_1x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}          # dotted overrides for experiments, e.g. "train.compile=false"

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: 13.3 timed (NVIDIA v4.0, 8xH100) + up to 10 of untimed init (compile, warm-up) + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-30}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
