# DGX H100: 8 GPUs, two 56-core Xeon 8480C sockets with 2 hyperthreads per core, one InfiniBand HCA per GPU.
# Sourced by launchers/config_common.sh for every config_DGXH100_*.sh; every value is a default.
export DGXNGPU=${DGXNGPU:-8}
export DGXSOCKETCORES=${DGXSOCKETCORES:-56}
export DGXNSOCKET=${DGXNSOCKET:-2}
export DGXHT=${DGXHT:-2}                     # hyperthreads per core
# bindpcie also pins each rank to the HCA nearest its GPU; run_and_time.sh does it only on more than one node.
export ENABLE_IB_BINDING=${ENABLE_IB_BINDING:-1}
# Minutes per job on top of the runs: container import on the nodes, per-run cache drop and compliance check.
export WALLTIME_MARGIN=${WALLTIME_MARGIN:-10}
