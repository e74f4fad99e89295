# Stable Diffusion v2 on eight DGX H100: 64 GPUs x 16 images = GBS 1024, an RCP point (2,839,273 images;
# lr 1.25e-7 x 1024 = 1.28e-4, warm-up 1000 steps), a checkpoint every 500 steps up to NVIDIA's cap of 3500
# steps, evaluated after training (offline, as config_DGXH100_01x08x64.sh says).
#   source launchers/stable_diffusion/config_DGXH100_08x08x16.sh
#   CONT=<image> DATADIR=/lustre/laion400m LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/stable_diffusion.sub
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-stable_diffusion}
export FLAVOUR=${FLAVOUR:-dgxh100_8x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-8}
# Minutes per run: about 8 timed on 64 H100 + evaluations per checkpoint + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-60}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
