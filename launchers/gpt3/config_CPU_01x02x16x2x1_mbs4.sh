# The GPT-3 debug flavour on one CPU node: 2 tasks (the "GPUs") in one TP=2 group, GBS 16, MBS 4, the
# synthetic C4 and its reference-layout initial checkpoint. What the launcher tests submit to the local Slurm:
#   source launchers/gpt3/config_CPU_01x02x16x2x1_mbs4.sh
#   python -m runtime.synthesize gpt3 --flavour debug --out data/gpt3_debug
#   DATADIR=$PWD/data/gpt3_debug LOAD_CHECKPOINTS_PATH=$PWD/data/gpt3_debug/init_checkpoint LOGDIR=$PWD/results \
#     CHECK_COMPLIANCE=0 sbatch -N $DGXNNODES -t $WALLTIME launchers/gpt3.sub
# CHECK_COMPLIANCE=0: the debug model's log fails the two closed rules no CPU-sized model can meet
# (max_sequence_length 2048, learning rate 2e-5/3e-5); README "Benchmark notes".
# Name: <nodes>x<gpus>x<GBS/DP>x<TP>x<PP>_mbs<MBS>, as the DGX H100 configs.

## DL params
export BENCHMARK=${BENCHMARK:-gpt3}
export FLAVOUR=${FLAVOUR:-debug}
export EXTRA_ARGS=${EXTRA_ARGS:-parallel.tp=2}
export SEED_BASE=${SEED_BASE:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: the debug run takes about a minute on 2 idle cores; shared machines are slower.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-15}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
