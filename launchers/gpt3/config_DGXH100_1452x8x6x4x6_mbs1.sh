# GPT-3 175B on 1452 DGX H100 (11 616 GPUs): GBS 2904, the largest v4.0 scale (3.444 min); NVIDIA also
# captured per-layer CUDA graphs there (_cg), which this stack does not do yet.
#   source launchers/gpt3/config_DGXH100_1452x8x6x4x6_mbs1.sh
#   CONT=<image> DATADIR=/lustre/c4/preprocessed_c4_spm LOAD_CHECKPOINTS_PATH=/lustre/gpt3/ckpt4000 \
#     LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/gpt3.sub
# Name: <nodes>x<gpus>x<GBS/DP>x<TP>x<PP>_mbs<MBS> (NVIDIA's v4.0 convention). The layout and batch live
# in models/gpt3/config.py (flavour dgxh100_1452x8: GBS 2904, TP 4, PP 6, virtual PP 8, MBS 1, DP 484); the data
# directory holds c4_en_{6,7}_c4_spm_text_document.{bin,idx} and the validation subset; LOAD_CHECKPOINTS_PATH
# the reference checkpoint (zarr arrays + common.pt: models/gpt3/prepare/README.md), without which the run is
# only a throughput measurement.
# Every value is a default: set it in the environment before sourcing to change it.

## DL params
export BENCHMARK=${BENCHMARK:-gpt3}
export FLAVOUR=${FLAVOUR:-dgxh100_1452x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}
export SEED_BASE=${SEED_BASE:-}            # run i of NEXP uses SEED_BASE-1+i (NVIDIA's GPT-3 practice) when set
# Megatron's TP/SP overlap relies on one hardware queue so communication kernels launch in issue order.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# NVTX_FLAG=1: nsys captures steps [PROFILE_START_STEP, PROFILE_STOP_STEP) (run.profile_start/stop_step).
export PROFILE_START_STEP=${PROFILE_START_STEP:-10}
export PROFILE_STOP_STEP=${PROFILE_STOP_STEP:-13}

## System run params
export DGXNNODES=${DGXNNODES:-1452}
# Minutes per run: timed part + up to 30 min of init (checkpoint load, warm-up) + slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-40}
# NVIDIA's GPT-3 practice: 3 runs per allocation. WALLTIME follows NEXP, so set it before sourcing this file.
export NEXP=${NEXP:-3}
# More than the system's 10-minute margin: the container import and the NCCL test take longer on this many nodes.
export WALLTIME_MARGIN=${WALLTIME_MARGIN:-15}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
