#!/usr/bin/env bash
# The test suite, from a fresh machine: pinned venv, lint (ruff: errors, import order), the local Slurm the
# launcher tests submit to, pytest.
#   usage: tests/run.sh [pytest args...]      e.g. tests/run.sh -m "not slow"   (the quick inner loop)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source launchers/setup_venv.sh
ruff check --no-cache .
if [[ -x tests/infra/start_slurm.sh ]]; then
    # The sbatch test needs slurmctld + slurmd on localhost; without root it is skipped (and fails in CI).
    tests/infra/start_slurm.sh || echo "warning: local Slurm did not start; the sbatch test will report it"
fi
if [[ $EUID -eq 0 ]] && ! command -v ompi_info >/dev/null; then
    # Open MPI beside the venv's MPICH, so the mpirun test covers both MPI families.
    apt-get install -y -qq openmpi-bin >/dev/null || echo "warning: openmpi-bin did not install"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec python -m pytest "$@"
