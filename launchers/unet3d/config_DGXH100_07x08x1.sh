# 3D U-Net on seven DGX H100: 56 GPUs x 1 sample = GBS 56, the same RCP point as one node, so the same
# hyperparameters (models/unet3d/config.py, flavour dgxh100_7x8). NVIDIA's 9-node v4.0 run trains on these 56
# GPUs and evaluates on 2 more nodes; here the training ranks evaluate.
#   source launchers/unet3d/config_DGXH100_07x08x1.sh
#   CONT=<image> DATADIR=/lustre/kits19 LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/unet3d.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-unet3d}
export FLAVOUR=${FLAVOUR:-dgxh100_7x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-7}
# Minutes per run: about 3 timed (NVIDIA v4.0: 1.91 min on 9 nodes with asynchronous eval) + up to 10 of
# untimed init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-15}
# 40 runs per result (the rules' count for unet3d).
export NEXP=${NEXP:-40}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
