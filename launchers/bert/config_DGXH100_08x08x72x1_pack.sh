# BERT-large phase 2 on eight DGX H100: 64 GPUs x 72 sequences (packed up to 2 per row) = GBS 4608, an RCP
# point (2.798M samples; lr 3.5e-3, 700 steps, beta 0.62/0.9). NVIDIA ran this scale unpadded at 72 per GPU.
#   source launchers/bert/config_DGXH100_08x08x72x1_pack.sh
#   CONT=<image> DATADIR=/lustre/bert LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/bert.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-bert}
export FLAVOUR=${FLAVOUR:-dgxh100_8x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-8}
# Minutes per run: about 1-2 timed (NVIDIA: 64 H100 at this batch) + up to 10 of untimed init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-15}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
