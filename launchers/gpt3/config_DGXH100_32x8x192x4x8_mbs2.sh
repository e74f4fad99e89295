# GPT-3 175B on 32 DGX H100 (256 GPUs): GBS 1536, the smallest published scale (v4.1: 96.66 min).
#   source launchers/gpt3/config_DGXH100_32x8x192x4x8_mbs2.sh
#   CONT=<image> NEXP=3 DATADIR=/lustre/c4/preprocessed_c4_spm LOAD_CHECKPOINTS_PATH=/lustre/gpt3/ckpt4000 \
#     LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/gpt3.sub
# Name: <nodes>x<gpus>x<GBS/DP>x<TP>x<PP>_mbs<MBS> (NVIDIA's v4.0 convention). The layout and batch live
# in models/gpt3/config.py (flavour dgxh100_32x8: GBS 1536, TP 4, PP 8, virtual PP 4, MBS 2, DP 8); the data
# directory holds c4_en_{6,7}_c4_spm_text_document.{bin,idx} and the validation subset; LOAD_CHECKPOINTS_PATH
# the reference checkpoint (zarr arrays + common.pt: models/gpt3/prepare/README.md), without which the run is
# only a throughput measurement.
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-gpt3}
export FLAVOUR=${FLAVOUR:-dgxh100_32x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}
export SEED_BASE=${SEED_BASE:-}            # run i of NEXP uses SEED_BASE-1+i (NVIDIA's GPT-3 practice) when set
# Megatron's TP/SP overlap relies on one hardware queue so communication kernels launch in issue order.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# NVTX_FLAG=1: nsys captures steps [PROFILE_START_STEP, PROFILE_STOP_STEP) (run.profile_start/stop_step).
export PROFILE_START_STEP=${PROFILE_START_STEP:-10}
export PROFILE_STOP_STEP=${PROFILE_STOP_STEP:-13}

## System run params
export DGXNNODES=${DGXNNODES:-32}
DGXSYSTEM=$(basename "${BASH_SOURCE[0]}" .sh)
export DGXSYSTEM=${DGXSYSTEM#config_}
# Minutes per run: timed part + up to 30 min of init (checkpoint load, warm-up) + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-150}
export WALLTIME=$(( ${NEXP:-3} * WALLTIME_RUNANDTIME + 15 ))

## System config params
export DGXNGPU=${DGXNGPU:-8}
export DGXSOCKETCORES=${DGXSOCKETCORES:-56}
export DGXNSOCKET=${DGXNSOCKET:-2}
export DGXHT=${DGXHT:-2}
export ENABLE_IB_BINDING=${ENABLE_IB_BINDING:-1}
