# The DLRMv2 debug flavour on one CPU node: 2 tasks (the "GPUs") x 512 samples = GBS 1024, synthetic data,
# tables sharded over the 2 processes by torchrec on gloo:
#   source launchers/dlrm_dcnv2/config_CPU_01x02x512.sh
#   python -m runtime.synthesize dlrm_dcnv2 --flavour debug --out data/dlrm_dcnv2_debug
#   DATADIR=$PWD/data/dlrm_dcnv2_debug LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/dlrm_dcnv2.sub
# With CONT unset, run.sub runs on the host with the repository's .venv.

## DL params
export BENCHMARK=${BENCHMARK:-dlrm_dcnv2}
export FLAVOUR=${FLAVOUR:-debug}
export EXTRA_ARGS=${EXTRA_ARGS:-}

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: the debug run takes under a minute on 2 idle cores; shared machines are slower.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-10}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
