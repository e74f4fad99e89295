# 3D U-Net on one DGX H100: 8 GPUs x 7 samples = GBS 56, an RCP point (357,404 samples at lr 2.0, warmup
# 1000 epochs from 1e-4), NVIDIA's v4.0 single-node shape.
#   source launchers/unet3d/config_DGXH100_01x08x7.sh
#   CONT=<image> DATADIR=/lustre/kits19 LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/unet3d.sub
# DATADIR is the preprocessed flat directory (pipelines/kits19/prepare/preprocess.py).
# Every value is a default: set it in the environment before sourcing to change it.

## DL params: the typed recipe (models/unet3d/config.py), never a flag string
export BENCHMARK=${BENCHMARK:-unet3d}
export FLAVOUR=${FLAVOUR:-dgxh100_1x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}          # dotted overrides for experiments, e.g. "data.loader=dali"

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: 12.1 timed (NVIDIA v4.0, 8xH100) + up to 10 of untimed init (compile, warm-up) + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-25}
# The rules score unet3d over 40 runs (olympic mean, 4 dropped at each end). WALLTIME follows NEXP, so set
# it before sourcing this file.
export NEXP=${NEXP:-40}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
