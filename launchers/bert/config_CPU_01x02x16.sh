# The BERT debug flavour on one CPU node: 2 tasks (the "GPUs") x 16 sequences = GBS 32, synthetic data.
#   source launchers/bert/config_CPU_01x02x16.sh
#   python -m runtime.synthesize bert --flavour debug --out data/bert_debug
#   DATADIR=$PWD/data/bert_debug LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/bert.sub
# With CONT unset, run.sub runs on the host with the repository's .venv.

## DL params
export BENCHMARK=${BENCHMARK:-bert}
export FLAVOUR=${FLAVOUR:-debug}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: the debug run reaches its target in under 30 s on 2 idle cores; shared machines are slower.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-10}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
