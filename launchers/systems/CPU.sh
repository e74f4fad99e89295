# A CPU-only node (the tests' local Slurm): 2 processes per node stand in for the GPUs, no InfiniBand.
# Sourced by launchers/config_common.sh for every config_CPU_*.sh; every value is a default.
export DGXNGPU=${DGXNGPU:-2}                 # processes per node; no GPUs behind them
export DGXSOCKETCORES=${DGXSOCKETCORES:-2}
export DGXNSOCKET=${DGXNSOCKET:-1}
export DGXHT=${DGXHT:-1}
export ENABLE_IB_BINDING=${ENABLE_IB_BINDING:-0}
export NCCL_TEST=${NCCL_TEST:-0}             # nothing to measure without GPUs
# Minutes per job on top of the runs: no container to import, a cache drop and a compliance check per run.
export WALLTIME_MARGIN=${WALLTIME_MARGIN:-5}
