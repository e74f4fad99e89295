# Llama-2-70B LoRA on 8 DGX H100 (64 GPUs): GBS 8, TP 4 x CP 2 x DP 8 (NVIDIA v4.0).
#   source launchers/llama2_70b_lora/config_DGXH100_8x8x1xtp4pp1cp2.sh
#   CONT=<image> DATADIR=/lustre/govreport LOAD_CHECKPOINTS_PATH=/lustre/llama2-70b-hf \
#     LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/llama2_70b_lora.sub
# Name: <nodes>x<gpus>x<GBS/DP>xtp<TP>pp<PP>cp<CP>. Flavour dgxh100_8x8: lr 3.6e-4 over 1024 steps. Context
# parallelism is Transformer Engine's attention: the image must have TE (models/llama2_70b_lora/model.py).
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-llama2_70b_lora}
export FLAVOUR=${FLAVOUR:-dgxh100_8x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}
export SEED_BASE=${SEED_BASE:-}
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
export PROFILE_START_STEP=${PROFILE_START_STEP:-10}
export PROFILE_STOP_STEP=${PROFILE_STOP_STEP:-13}

## System run params
export DGXNNODES=${DGXNNODES:-8}
# Minutes per run: about 6 timed + up to 30 min of init + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-50}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
