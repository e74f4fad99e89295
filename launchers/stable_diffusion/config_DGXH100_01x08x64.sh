# Stable Diffusion v2 on one DGX H100: 8 GPUs x 64 images = GBS 512, an RCP point (2,560,000 images; lr
# 1.25e-7 x 512 = 6.4e-5, warm-up 1000 steps), a checkpoint every 1000 steps (512,000 images) up to NVIDIA's
# cap of 6000 steps, evaluated after training (train.eval_mode=offline, NVIDIA's; run_stop carries the time of
# the first passing checkpoint). One run in ten reports every checkpoint up to the first pass:
# EXTRA_ARGS=eval.offline_report=all. Pre-encoded captions (pipelines/laion/prepare/encode_captions.py):
# EXTRA_ARGS=data.encoded_captions=true.
#   source launchers/stable_diffusion/config_DGXH100_01x08x64.sh
#   CONT=<image> DATADIR=/lustre/laion400m LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/stable_diffusion.sub
# DATADIR holds webdataset-moments-filtered/, val2014_30k.tsv, val2014_30k_stats.npz, 512-base-ema.ckpt, the
# open_clip ViT-H-14 weights and the FID Inception weights (pipelines/laion/prepare/).
# Every value is a default: set it in the environment before sourcing to change it.

## DL params: the typed recipe (models/stable_diffusion/config.py), never a flag string
export BENCHMARK=${BENCHMARK:-stable_diffusion}
export FLAVOUR=${FLAVOUR:-dgxh100_1x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: about 50 to the 6000-step cap (NVIDIA v4.0, 8xH100) + the checkpoints' 30k-image evaluations.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-180}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
