#!/usr/bin/env bash
# Launch NP ranks of the training entry point with mpirun: one process per GPU, wired by the MPI
# launcher's own variables (OMPI_COMM_WORLD_* for Open MPI, PMI_* for MPICH's hydra), which
# runtime/distributed.py reads.
#
#   usage: launchers/mpirun.sh NP BENCHMARK [--flavour F] [--data-dir D] [--run-dir R] [key=value ...]
#   e.g.   launchers/mpirun.sh 8 resnet --flavour dgxh100_1x8 --data-dir /data/imagenet
#
#   MPIRUN       the launcher (default: mpirun, else mpiexec); Open MPI or MPICH/hydra, detected
#   HOSTFILE     hosts for a multi-node run (Open MPI --hostfile, MPICH -f); rank 0 runs on its first host
#   MASTER_ADDR  rendezvous host (default: the first host of HOSTFILE, else 127.0.0.1); MASTER_PORT (29500)
#   MPI_ARGS     extra flags for the launcher, word-split
#   DRYRUN=1     print the command instead of running it
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 2 || ! "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 NP BENCHMARK [runtime.train arguments...]" >&2
    exit 2
fi
np="$1"
shift
cd "$REPO"

MPIRUN="${MPIRUN:-$(command -v mpirun || command -v mpiexec || true)}"
if [[ -z "$MPIRUN" ]]; then
    echo "mpirun.sh: no mpirun or mpiexec on PATH (pip install mpich, or load your MPI)" >&2
    exit 2
fi
version="$("$MPIRUN" --version 2>&1 || true)"
# Both MPIs place rank 0 on the first host of the host file. Naming it here means the entry point never has
# to ask MPI (through mpi4py) who rank 0 is, which fails when mpi4py was built for another MPI than this
# mpirun (pip's mpi4py + MPICH under Open MPI aborts in MPI_Init on PMIx).
if [[ -z "${MASTER_ADDR:-}" ]]; then
    if [[ -n "${HOSTFILE:-}" ]]; then
        MASTER_ADDR="$(awk '!/^[[:space:]]*(#|$)/ {sub(/:.*/, "", $1); print $1; exit}' "$HOSTFILE")"
    fi
    export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
fi
export MASTER_PORT="${MASTER_PORT:-29500}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONUNBUFFERED=1

if grep -q "Open MPI\|OpenRTE\|open-mpi" <<< "$version"; then
    flavour=openmpi
    # --bind-to none: Open MPI binds each rank to one core by default, which starves the data-loader
    # workers and threads a training rank starts. --oversubscribe: CPU test machines have fewer slots than ranks.
    launch=("$MPIRUN" -np "$np" --oversubscribe --bind-to none)
    [[ "$(id -u)" -eq 0 ]] && launch+=(--allow-run-as-root)
    [[ -n "${HOSTFILE:-}" ]] && launch+=(--hostfile "$HOSTFILE")
    # Open MPI starts remote ranks with a bare environment: forward what the entry point needs.
    for var in PATH LD_LIBRARY_PATH PYTHONPATH VIRTUAL_ENV MASTER_ADDR MASTER_PORT OMP_NUM_THREADS PYTHONUNBUFFERED \
               NCCL_DEBUG NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME DGXSYSTEM; do
        [[ -n "${!var:-}" ]] && launch+=(-x "$var")
    done
elif grep -qi "HYDRA\|MPICH\|Intel(R) MPI" <<< "$version"; then
    flavour=mpich
    # Hydra forwards the whole environment by default (-genvall).
    launch=("$MPIRUN" -n "$np")
    [[ -n "${HOSTFILE:-}" ]] && launch+=(-f "$HOSTFILE")
else
    echo "mpirun.sh: cannot tell which MPI '$MPIRUN' is (neither Open MPI nor MPICH in its --version):" >&2
    head -n 3 <<< "$version" >&2
    exit 2
fi
read -ra mpi_args <<< "${MPI_ARGS:-}"
cmd=("${launch[@]}" "${mpi_args[@]}" "${PYTHON:-python}" -u -m runtime.train "$@")

if [[ "${DRYRUN:-0}" == 1 ]]; then
    echo "mpirun.sh: $flavour"
    printf 'DRYRUN:'; printf ' %q' "${cmd[@]}"; printf '\n'
    exit 0
fi
echo "mpirun.sh: $flavour, $np ranks: ${cmd[*]}"
exec "${cmd[@]}"
