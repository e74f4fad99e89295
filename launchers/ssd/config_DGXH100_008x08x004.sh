# RetinaNet on eight DGX H100: 64 GPUs x 4 images = GBS 256, the same RCP point as one node, so the same
# hyperparameters (models/ssd/config.py, flavour dgxh100_8x8).
#   source launchers/ssd/config_DGXH100_008x08x004.sh
#   CONT=<image> DATADIR=/lustre/openimages LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/ssd.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-ssd}
export FLAVOUR=${FLAVOUR:-dgxh100_8x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-8}
# Minutes per run: about 8 timed (NVIDIA v4.0 on 64 H100) + up to 10 of untimed init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-25}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
