#!/usr/bin/env bash
# Create (or refresh) the repository's virtual environment with exactly the versions pyproject.toml pins.
# Idempotent and cheap when nothing changed: the venv remembers the hash of the files it was built from.
#   usage: source launchers/setup_venv.sh      (activates .venv in the calling shell)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

want="$(cat "$REPO/pyproject.toml" "$REPO/requirements-nodeps.txt" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.pyproject.sha256" 2>/dev/null)" != "$want" ]]; then
    echo "setting up $VENV (pinned packages from pyproject.toml; the first time takes a few minutes)"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$REPO[test,mpi]"
    "$VENV/bin/python" -m pip install --quiet --no-deps -r "$REPO/requirements-nodeps.txt"
    echo "$want" > "$VENV/.pyproject.sha256"
fi
set +u
# shellcheck disable=SC1091
source "$VENV/bin/activate"
set -u
