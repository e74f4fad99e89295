# Llama-2-70B LoRA on 1 DGX H100 (8 GPUs): GBS 8, NVIDIA v4.0 28.16 min.
#   source launchers/llama2_70b_lora/config_DGXH100_1x8x4xtp4pp1cp1.sh
#   CONT=<image> DATADIR=/lustre/govreport LOAD_CHECKPOINTS_PATH=/lustre/llama2-70b-hf \
#     LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/llama2_70b_lora.sub
# Name: <nodes>x<gpus>x<GBS/DP>xtp<TP>pp<PP>cp<CP> (NVIDIA's v4.0 convention). The layout and batch live in
# models/llama2_70b_lora/config.py (flavour dgxh100_1x8: TP 4 with SP, DP 2, MBS 1, GA 4, lr 5e-4, 896 steps);
# DATADIR holds the GovReport parquet files (pipelines/govreport/prepare/download_dataset.sh),
# LOAD_CHECKPOINTS_PATH the HF Llama-2-70B directory (models/llama2_70b_lora/prepare/README.md).
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-llama2_70b_lora}
export FLAVOUR=${FLAVOUR:-dgxh100_1x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}
export SEED_BASE=${SEED_BASE:-}
# Megatron's TP/SP overlap relies on one hardware queue so communication kernels launch in issue order.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
export PROFILE_START_STEP=${PROFILE_START_STEP:-10}
export PROFILE_STOP_STEP=${PROFILE_STOP_STEP:-13}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: about 30 timed + up to 30 min of init (70B checkpoint load, warm-up) + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-75}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
