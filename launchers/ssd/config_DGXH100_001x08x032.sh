# RetinaNet on one DGX H100: 8 GPUs x 32 images = GBS 256, the RCP point (4.0 epochs at lr 1e-4, warm-up 1).
#   source launchers/ssd/config_DGXH100_001x08x032.sh
#   CONT=<image> DATADIR=/lustre/openimages LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/ssd.sub
# The backbone's ImageNet weights: $DATADIR/resnext50_32x4d-7cdf4587.pth, or LOAD_CHECKPOINTS_PATH=<file>.
# Every value is a default: set it in the environment before sourcing to change it.

## DL params: the typed recipe (models/ssd/config.py), never a flag string
export BENCHMARK=${BENCHMARK:-ssd}
export FLAVOUR=${FLAVOUR:-dgxh100_1x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: about 36 timed (NVIDIA v4.0, 8xH100) + up to 10 of untimed init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-60}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
