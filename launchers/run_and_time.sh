#!/usr/bin/env bash
# One timed training run, NVIDIA MLPerf style: environment variables in, training command out.
#
# Runs once per rank when Slurm (srun, one task per GPU) or MPI started it, and once per node otherwise, in
# which case it starts the node's ranks with torchrun. Works inside the container (run.sub with CONT) and
# on a host with the repository's venv on PATH.
#
#   BENCHMARK, FLAVOUR   what to train: python -m runtime.train $BENCHMARK --flavour $FLAVOUR
#   DATADIR, LOGDIR      dataset; where logs, nsys reports and the run directory go (default ./results)
#   PREPROC_DATA         NVIDIA's GPT-3 name for the dataset directory: used when DATADIR is unset
#   RUNDIR               the run directory (default $LOGDIR/<benchmark>_<jobid>)
#   SEED                 passed as --seed when set; otherwise the entry point draws a fresh one
#   LOAD_CHECKPOINTS_PATH  the initial checkpoint, passed as data.init_checkpoint (GPT-3's reference checkpoint)
#   CHECKPOINT_DIR       the run's own checkpoints, passed as run.checkpoint_dir: saved on SIGTERM (exit 143), and
#                        resumed from when the same command runs again (run.sub sets one per run)
#   CHECKPOINT_EVERY_BLOCKS  also save every N blocks (run.checkpoint_every_blocks; 0 or unset: only on SIGTERM)
#   EXTRA_ARGS           dotted overrides, e.g. "optim.base_lr=4 train.max_epochs=20"; "$@" is appended too
#   TENSOR_MODEL_PARALLEL, PIPELINE_MODEL_PARALLEL, INTERLEAVED_PIPELINE, MICRO_BATCH_SIZE, MINIBS
#                        NVIDIA's GPT-3 layout and batch variables: parallel.tp, parallel.pp, train.virtual_pp,
#                        train.micro_batch_size, and train.global_batch_size = MINIBS x DP (DP = ranks / (TP x PP
#                        x CP)); refused for a benchmark that has no such field. SPM (the tokenizer model) is
#                        refused: nothing here reads it.
#   DGXNGPU              processes per node for torchrun (default: the node's GPU count, or 1 without GPUs)
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, RDZV_ID   multi-node torchrun (c10d rendezvous; node 0 hosts it)
#   LAUNCH_MODE          torchrun | direct, to override the automatic choice
#   NVTX_FLAG=1          wrap in nsys (capture range from cudaProfilerStart/Stop, steps PROFILE_START_STEP..STOP)
#   ENABLE_IB_BINDING=1  bindpcie also pins the nearest InfiniBand HCA (multi-node)
#   DRYRUN=1             print the command instead of running it
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A setting this script cannot honour stops the run before it starts: one line, exit 2.
refuse() { echo "run_and_time: $*" >&2; exit 2; }

: "${BENCHMARK:?set BENCHMARK (resnet, ssd, unet3d, stable_diffusion, bert, gpt3, llama2_70b_lora, dlrm_dcnv2, gnn)}"
: "${FLAVOUR:?set FLAVOUR (debug, dgxh100_1x8, ...); the config files under launchers/<benchmark>/ set it}"
# NVIDIA's GPT-3 mounts its tokenizer as SPM. Nothing here reads it (the C4 files come tokenized), so a set SPM
# is refused rather than ignored.
[[ -z "${SPM:-}" ]] || refuse "SPM=$SPM is not used: the GPT-3 data are tokenized .bin/.idx files (DATADIR); unset SPM"
# NVIDIA's GPT-3 calls the dataset directory PREPROC_DATA.
if [[ -n "${PREPROC_DATA:-}" ]]; then
    [[ -z "${DATADIR:-}" || "$DATADIR" == "$PREPROC_DATA" ]] ||
        refuse "DATADIR=$DATADIR and PREPROC_DATA=$PREPROC_DATA name two dataset directories; set one of them"
    DATADIR="$PREPROC_DATA"
fi
: "${DATADIR:?set DATADIR (or PREPROC_DATA, as NVIDIA calls it) to the dataset directory}"
# Relative paths mean relative to where the caller stood, not to the repository we change into below.
absolute() { if [[ "$1" == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
DATADIR="$(absolute "$DATADIR")"
LOGDIR="$(absolute "${LOGDIR:-$REPO/results}")"
JOBID="${SLURM_JOB_ID:-${RDZV_ID:-local}}"
RUNDIR="$(absolute "${RUNDIR:-$LOGDIR/${BENCHMARK}_${JOBID}}")"
[[ -z "${CHECKPOINT_DIR:-}" ]] || CHECKPOINT_DIR="$(absolute "$CHECKPOINT_DIR")"
PYTHON="${PYTHON:-python}"
cd "$REPO"   # `python -m runtime.train` resolves the package from here, in or out of the container

# A GPU rank needs no intra-op CPU threads, and N ranks x all-cores threads oversubscribe the node
# (slurm2pytorch sets the same; torchrun does too, but only for more than one process per node).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# --- one rank per process, or torchrun per node? ------------------------------------------------------
# srun with one task per GPU (more tasks than nodes) and mpirun already started every rank: run the
# entry point directly, it reads SLURM_* / OMPI_* / PMI_* itself. Anything else is one process per node.
# SLURM_STEP_ID tells an srun task from the batch script, which sees the job's SLURM_NTASKS but is one process.
if [[ -z "${LAUNCH_MODE:-}" ]]; then
    if [[ -n "${SLURM_STEP_ID:-}" && "${SLURM_NTASKS:-1}" -gt "${SLURM_NNODES:-1}" ]]; then
        LAUNCH_MODE=direct
    elif [[ -n "${OMPI_COMM_WORLD_SIZE:-}" || -n "${PMI_SIZE:-}" ]]; then
        LAUNCH_MODE=direct
    else
        LAUNCH_MODE=torchrun
    fi
fi

entry=(-m runtime.train "$BENCHMARK" --flavour "$FLAVOUR" --data-dir "$DATADIR" --run-dir "$RUNDIR")
[[ -n "${SEED:-}" ]] && entry+=(--seed "$SEED")
if [[ "${NVTX_FLAG:-0}" == 1 ]]; then
    # The entry point calls cudaProfilerStart/Stop around these steps; nsys records only that range.
    entry+=("run.profile_start_step=${PROFILE_START_STEP:-10}" "run.profile_stop_step=${PROFILE_STOP_STEP:-20}")
fi
[[ -n "${LOAD_CHECKPOINTS_PATH:-}" ]] && entry+=("data.init_checkpoint=$LOAD_CHECKPOINTS_PATH")
[[ -n "${CHECKPOINT_DIR:-}" ]] && entry+=("run.checkpoint_dir=$CHECKPOINT_DIR")
if [[ -n "${CHECKPOINT_EVERY_BLOCKS:-}" ]]; then
    [[ "$CHECKPOINT_EVERY_BLOCKS" =~ ^[0-9]+$ ]] ||
        refuse "CHECKPOINT_EVERY_BLOCKS=$CHECKPOINT_EVERY_BLOCKS: expected a number of blocks (0: only on SIGTERM)"
    entry+=("run.checkpoint_every_blocks=$CHECKPOINT_EVERY_BLOCKS")
fi
read -ra extra_args <<< "${EXTRA_ARGS:-}"
overrides=("${extra_args[@]}" "$@")

case "$LAUNCH_MODE" in
    direct)
        rank="${SLURM_PROCID:-${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}}"
        world="${SLURM_NTASKS:-${OMPI_COMM_WORLD_SIZE:-${PMI_SIZE:-1}}}"
        launch=("$PYTHON" -u)
        ;;
    torchrun)
        nnodes="${NNODES:-${SLURM_NNODES:-1}}"
        node_rank="${NODE_RANK:-${SLURM_NODEID:-0}}"
        rank="$node_rank"
        if [[ -z "${DGXNGPU:-}" ]]; then
            DGXNGPU="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)"
            [[ "$DGXNGPU" -gt 0 ]] || DGXNGPU=1
        fi
        world=$((nnodes * DGXNGPU))
        if [[ "$nnodes" -eq 1 ]]; then
            # --standalone: a private rendezvous on a free port, so concurrent jobs on one host never collide.
            launch=(torchrun --standalone --nnodes=1 --nproc_per_node="$DGXNGPU")
        else
            : "${MASTER_ADDR:?multi-node torchrun needs MASTER_ADDR (the host of node rank 0)}"
            # c10d rendezvous with node 0 named as the store's host (is_host), so two "nodes" on one machine
            # (the tests) or nodes whose host names do not match MASTER_ADDR still agree on who serves it.
            # That is all NODE_RANK does here: c10d hands out global ranks in order of arrival (torchrun
            # ignores --node_rank unless the rendezvous is static).
            launch=(torchrun --nnodes="$nnodes" --nproc_per_node="$DGXNGPU"
                    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}"
                    --rdzv_id="${RDZV_ID:-$JOBID}" --rdzv_conf="is_host=$([[ "$node_rank" -eq 0 ]] && echo 1 || echo 0)"
                    --max_restarts=0)
        fi
        export PYTHONUNBUFFERED=1   # torchrun's workers relay output line by line only when unbuffered
        ;;
    *) echo "run_and_time: LAUNCH_MODE must be torchrun or direct, not '$LAUNCH_MODE'" >&2; exit 2 ;;
esac

# --- NVIDIA's GPT-3 layout and batch variables ------------------------------------------------------------
# NVIDIA's config files give the layout and batch as variables; ours name a flavour. Each variable that is set
# becomes the override of the field it means, placed before EXTRA_ARGS and the arguments (which must agree).
# Which variables a benchmark takes, and the field of its config (models/<benchmark>/config.py) each one sets;
# tests/launchers checks that every field named here exists. The rest are refused.
declare -A field_of=([MINIBS]=train.global_batch_size)
if [[ "$BENCHMARK" == gpt3 ]]; then
    field_of+=([TENSOR_MODEL_PARALLEL]=parallel.tp [PIPELINE_MODEL_PARALLEL]=parallel.pp
               [INTERLEAVED_PIPELINE]=train.virtual_pp [MICRO_BATCH_SIZE]=train.micro_batch_size)
fi

# The value the overrides give a field (the last one wins, as in runtime.train), or nothing.
overridden() {
    local item value=""
    for item in "${overrides[@]}"; do [[ "$item" == "$1="* ]] && value="${item#*=}"; done
    echo "$value"
}

for var in TENSOR_MODEL_PARALLEL PIPELINE_MODEL_PARALLEL INTERLEAVED_PIPELINE MICRO_BATCH_SIZE MINIBS; do
    value="${!var:-}"
    [[ -n "$value" ]] || continue
    field="${field_of[$var]:-}"
    [[ -n "$field" ]] || refuse "$var=$value is NVIDIA's GPT-3 variable, which $BENCHMARK does not take; unset $var"
    # NVIDIA writes "null" (or 0) for no interleaving; ours is one model chunk per pipeline stage.
    [[ "$var" == INTERLEAVED_PIPELINE && "$value" =~ ^(0|null|None)$ ]] && value=1
    [[ "$value" =~ ^[1-9][0-9]*$ ]] || refuse "$var=$value: expected a positive integer"
    if [[ "$var" == MINIBS ]]; then
        # MINIBS is the batch of one data-parallel replica (NVIDIA: GBS / DP, the config name's third number), and
        # DP what the model-parallel groups leave of the ranks. Without model parallelism DP is every rank; with
        # it, the group sizes must be known here, and the flavour's are not (NVIDIA's configs set all three).
        tp=1 pp=1 cp=1
        if [[ -n "${field_of[TENSOR_MODEL_PARALLEL]:-}" ]]; then
            tp="${TENSOR_MODEL_PARALLEL:-$(overridden parallel.tp)}"
            pp="${PIPELINE_MODEL_PARALLEL:-$(overridden parallel.pp)}"
            cp="$(overridden parallel.cp)" && cp="${cp:-1}"
            [[ -n "$tp" && -n "$pp" ]] ||
                refuse "MINIBS=$value is GBS / DP: set TENSOR_MODEL_PARALLEL and PIPELINE_MODEL_PARALLEL too"
            [[ "$tp $pp $cp" =~ ^[1-9][0-9]*\ [1-9][0-9]*\ [1-9][0-9]*$ ]] ||
                refuse "MINIBS=$value: TP $tp, PP $pp and CP $cp are not all positive integers"
        fi
        (( world % (tp * pp * cp) == 0 )) ||
            refuse "MINIBS=$value: $world ranks do not split into TP $tp x PP $pp x CP $cp groups"
        value=$((value * world / (tp * pp * cp)))
    fi
    given="$(overridden "$field")"
    [[ -z "$given" || "$given" == "$value" ]] ||
        refuse "$var gives $field=$value but EXTRA_ARGS or the arguments set $field=$given; keep one"
    entry+=("$field=$value")
done
entry+=("${overrides[@]}")

# --- wrappers -------------------------------------------------------------------------------------------
wrap=()
if [[ "$LAUNCH_MODE" == direct ]] && command -v bindpcie >/dev/null; then
    # Pin each rank to the cores and NUMA memory next to its GPU (mlperf-common's bindpcie).
    wrap+=(bindpcie --cpu=exclusive)
    if [[ "${ENABLE_IB_BINDING:-0}" == 1 && "${SLURM_NNODES:-1}" -gt 1 ]]; then wrap+=(--ib=single); fi
    wrap+=(--)
fi
if [[ "${NVTX_FLAG:-0}" == 1 ]]; then
    if ! command -v nsys >/dev/null; then
        echo "run_and_time: NVTX_FLAG=1 but nsys is not on PATH (it ships with the CUDA toolkit and the NGC" \
             "containers; on a host install Nsight Systems or unset NVTX_FLAG)" >&2
        exit 2
    fi
    mkdir -p "$LOGDIR"
    wrap+=(nsys profile --capture-range=cudaProfilerApi --capture-range-end=stop --sample=none --cpuctxsw=none
           --trace=cuda,nvtx -f true -o "$LOGDIR/${BENCHMARK}_${DGXSYSTEM:-local}_${JOBID}_${rank}")
fi
cmd=("${wrap[@]}" "${launch[@]}" "${entry[@]}")

if [[ "${DRYRUN:-0}" == 1 ]]; then
    echo "run_and_time: mode=$LAUNCH_MODE rank=$rank"
    printf 'DRYRUN:'; printf ' %q' "${cmd[@]}"; printf '\n'
    exit 0
fi

# --- the timed run --------------------------------------------------------------------------------------
# Slurm ends a job (requeue, preemption, time limit) with SIGTERM to every process of it at once, the training
# processes included, which save a checkpoint and exit 143 on it. This script outlives them instead of dying
# first: a step ends with its tasks, and slurmstepd then kills what is left of it, a rank in mid-save included.
# (The trap runs once the command has exited; the command gets its own SIGTERM, not one from here.)
trap 'echo "run_and_time: SIGTERM: rank $rank waited for its run to stop" >&2' TERM
start=$(date +%s.%N)
echo "STARTING TIMING RUN AT $(date '+%Y-%m-%d %r') ($LAUNCH_MODE, rank $rank): ${cmd[*]}"
rc=0
"${cmd[@]}" || rc=$?
end=$(date +%s.%N)
echo "ENDING TIMING RUN AT $(date '+%Y-%m-%d %r')"
# Wall time of the whole process, initialisation included; the MLPerf score is run_start..run_stop in the log.
echo "run_and_time: $BENCHMARK rank $rank exit $rc after $(awk "BEGIN {printf \"%.1f\", $end - $start}") s wall clock"
exit "$rc"
