# R-GAT on one DGX H100: 8 GPUs x 2048 seeds = GBS 16384, the RCP point at lr 2e-3 (0.861 epochs), NVIDIA's
# v4.0 single-node shape.
#   source launchers/gnn/config_DGXH100_01x08x2048.sh
#   CONT=<image> DATADIR=/lustre/igbh LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/gnn.sub
# DATADIR holds full/processed/ (pipelines/igbh/prepare/download_igbh_full.sh), with train_idx.pt/val_idx.pt and
# the CSC graph cache written by the prepare scripts. Every value is a default: set it before sourcing.

## DL params: the typed recipe (models/gnn/config.py), never a flag string
export BENCHMARK=${BENCHMARK:-gnn}
export FLAVOUR=${FLAVOUR:-dgxh100_1x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}          # dotted overrides, e.g. "data.fp16_features=true"

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: about 11.3 timed (NVIDIA v4.0, 8xH100) + up to 10 of untimed init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-30}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
