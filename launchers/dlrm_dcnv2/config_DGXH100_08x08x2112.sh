# DLRMv2 (DCNv2) on eight DGX H100: 64 GPUs x 2112 samples = GBS 135168, the RCP point NVIDIA uses at scale
# (0.928 epochs at lr 0.0034); eval batch 1048576 (models/dlrm_dcnv2/config.py, flavour dgxh100_8x8).
#   source launchers/dlrm_dcnv2/config_DGXH100_08x08x2112.sh
#   CONT=<image> DATADIR=/lustre/criteo_multihot LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/dlrm_dcnv2.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-dlrm_dcnv2}
export FLAVOUR=${FLAVOUR:-dgxh100_8x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-8}
# Minutes per run: NVIDIA's HugeCTR needs ~1 timed on 64-128 H100; this torchrec path is unmeasured on GPUs:
# allow 10 timed + the untimed init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-20}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
