# R-GAT on eight DGX H100: 64 GPUs x 1024 seeds = GBS 65536, the RCP point at lr 3e-3 (1.186 epochs), NVIDIA's
# 64-GPU batch and learning rate (models/gnn/config.py, flavour dgxh100_8x8).
#   source launchers/gnn/config_DGXH100_08x08x1024.sh
#   CONT=<image> DATADIR=/lustre/igbh LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/gnn.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-gnn}
export FLAVOUR=${FLAVOUR:-dgxh100_8x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-8}
# Minutes per run: about 3 timed at this scale + up to 10 of untimed init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-20}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
