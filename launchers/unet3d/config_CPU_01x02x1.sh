# The 3D U-Net debug flavour on one CPU node: 2 tasks (the "GPUs") x 1 sample = GBS 2, synthetic KiTS19.
# This is what a launcher test would submit to the local Slurm (tests/infra/start_slurm.sh):
#   source launchers/unet3d/config_CPU_01x02x1.sh
#   python -m runtime.synthesize unet3d --flavour debug --out data/unet3d_debug
#   DATADIR=$PWD/data/unet3d_debug LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/unet3d.sub
# With CONT unset, run.sub runs on the host with the repository's .venv.

## DL params
export BENCHMARK=${BENCHMARK:-unet3d}
export FLAVOUR=${FLAVOUR:-debug}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: the debug run takes one to two minutes on 2 idle cores; shared machines are slower.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-15}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
