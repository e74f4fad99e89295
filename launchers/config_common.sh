# What every launchers/<benchmark>/config_<SYSTEM>_<shape>.sh shares; its last line sources this file. The config
# file sets its benchmark's values first (BENCHMARK, FLAVOUR, DGXNNODES, WALLTIME_RUNANDTIME, ...), this adds the
# system block and what derives from the two. Sourced into the user's shell, so no `set -e` and no `exit`.
# Every input is a default (${VAR:-...}): set it in the environment before sourcing the config file to change it.

# DGXSYSTEM is the name of the config file that sourced this one (NVIDIA's convention: the log's
# submission_platform and the :::DLPAL line carry it), never of this file or of the cwd.
DGXSYSTEM=$(basename "${BASH_SOURCE[1]:?source a launchers/<benchmark>/config_*.sh, not config_common.sh}" .sh)
export DGXSYSTEM=${DGXSYSTEM#config_}

## System config params: DGXH100_08x08x51 takes launchers/systems/DGXH100.sh
_system_file="$(dirname "${BASH_SOURCE[0]}")/systems/${DGXSYSTEM%%_*}.sh"
if [[ -f "$_system_file" ]]; then
    source "$_system_file"
    unset _system_file
else
    echo "config_common.sh: no system block $_system_file for $DGXSYSTEM: add one like systems/DGXH100.sh" >&2
    unset _system_file
    return 1
fi

## System run params
# Timed runs per allocation. Exported so that run.sub runs as many as WALLTIME below has room for.
export NEXP=${NEXP:-1}
# Minutes: NEXP runs of the config's per-run minutes, plus the system's margin (container import, per-run
# cache drop, compliance check). Derived, so that it follows NEXP: change the inputs, or pass sbatch -t.
: "${WALLTIME_RUNANDTIME:?the config file sets WALLTIME_RUNANDTIME (minutes per run) before this line}"
export WALLTIME=$(( NEXP * WALLTIME_RUNANDTIME + WALLTIME_MARGIN ))
