# The Stable Diffusion debug flavour on one CPU node: 2 tasks (the "GPUs") x 8 images = GBS 16, synthetic data.
#   source launchers/stable_diffusion/config_CPU_01x02x08.sh
#   python -m runtime.synthesize stable_diffusion --flavour debug --out data/stable_diffusion_debug
#   DATADIR=$PWD/data/stable_diffusion_debug LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/stable_diffusion.sub
# With CONT unset, run.sub runs on the host with the repository's .venv.

## DL params
export BENCHMARK=${BENCHMARK:-stable_diffusion}
export FLAVOUR=${FLAVOUR:-debug}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: about a minute on 2 idle cores; shared machines are slower.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-20}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
