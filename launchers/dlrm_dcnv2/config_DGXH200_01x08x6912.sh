# DLRMv2 (DCNv2) on one DGX H200: 8 GPUs x 6912 samples = GBS 55296, an RCP point (0.762 epochs at lr 0.004),
# NVIDIA's v4.0 single-node batch; eval batch 262144 (models/dlrm_dcnv2/config.py, flavour dgxh200_1x8: the
# sharding planner gets 141 GB per GPU).
#   source launchers/dlrm_dcnv2/config_DGXH200_01x08x6912.sh
#   CONT=<image> DATADIR=/lustre/criteo_multihot LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/dlrm_dcnv2.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params: the typed recipe (models/dlrm_dcnv2/config.py), never a flag string
export BENCHMARK=${BENCHMARK:-dlrm_dcnv2}
export FLAVOUR=${FLAVOUR:-dgxh200_1x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}          # dotted overrides for experiments, e.g. "train.precision=bf16"

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: NVIDIA's HugeCTR needs 3.5 timed on 8 H200; this torchrec path is unmeasured on GPUs, so
# allow 20 timed (one epoch is the budget) + the untimed init (sharding plan, table init, warm-up) + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-30}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
