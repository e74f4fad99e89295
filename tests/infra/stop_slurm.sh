#!/usr/bin/env bash
# Stop the local Slurm started by tests/infra/start_slurm.sh (slurmd, then slurmctld). munged is left
# running: it is cheap and other tools on the machine may use it. Safe to run when nothing is running.
set -euo pipefail

for pidfile in /run/slurmd-mlperf.pid /run/slurmctld-mlperf.pid; do
    if [[ -s "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        pid="$(cat "$pidfile")"
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop_slurm: pid $pid ($pidfile) ignored SIGTERM; sending SIGKILL"
            kill -9 "$pid"
        fi
        echo "stop_slurm: stopped $(basename "$pidfile" .pid) (pid $pid)"
    fi
    rm -f "$pidfile"
done
