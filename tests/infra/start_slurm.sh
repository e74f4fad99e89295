#!/usr/bin/env bash
# Start a single-node Slurm on localhost for the launcher tests: munged, slurmctld and slurmd, run as
# root without systemd (containers and CI machines have none). The node advertises `nproc` CPUs and a
# fake `gpu:8` gres backed by character devices, so `--gpus-per-node=8` is accepted as on a DGX.
#
# Idempotent: installs slurm-wlm only when missing, rewrites the config only when it changed, and leaves
# daemons that already answer alone. Exits 0 once `sinfo` reports the node idle; on failure it says what
# broke and prints the tail of the relevant daemon log.
#   usage: tests/infra/start_slurm.sh          (root; stop with tests/infra/stop_slurm.sh)
set -euo pipefail

SLURM_STATE=/var/lib/slurm-mlperf        # our own state tree: never mixes with a packaged install's
SLURM_LOG=/var/log/slurm-mlperf
CONF_DIR=/etc/slurm
NODE="$(hostname -s)"
CPUS="$(nproc)"
FAKE_GPUS="${FAKE_GPUS:-8}"

fail() {
    echo "start_slurm: FAILED: $*" >&2
    for f in "$SLURM_LOG/slurmctld.log" "$SLURM_LOG/slurmd.log" /var/log/munge/munged.log; do
        [[ -s "$f" ]] && { echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

[[ "$(id -u)" -eq 0 ]] || fail "needs root (it installs packages and runs the daemons as root)"

# --- packages -----------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "start_slurm: installing slurm-wlm (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update"
    apt-get install -y -qq slurm-wlm >/dev/null || fail "apt-get install slurm-wlm"
fi

# --- munge: Slurm's authentication. The package's postinst normally makes the key; make it if not.
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge   # clients (slurm, sbatch) must reach the socket
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    echo "start_slurm: starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start"
    for _ in $(seq 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n </dev/null | unmunge >/dev/null || fail "munge credentials do not round-trip"
fi

# --- fake GPUs: slurmd only checks that each gres File exists, so /dev/null-like char devices do.
gres_line=""
if [[ "$FAKE_GPUS" -gt 0 ]]; then
    for ((i = 0; i < FAKE_GPUS; i++)); do
        [[ -e "/dev/fakegpu$i" ]] || mknod "/dev/fakegpu$i" c 1 3 2>/dev/null || true
    done
    if [[ -c /dev/fakegpu0 && -c "/dev/fakegpu$((FAKE_GPUS - 1))" ]]; then
        gres_line="Gres=gpu:$FAKE_GPUS"
    else
        echo "start_slurm: cannot create /dev/fakegpu*; the node gets no gpu gres"
    fi
fi

# --- config ---------------------------------------------------------------------------------------
mkdir -p "$CONF_DIR" "$SLURM_STATE/ctld" "$SLURM_STATE/d" "$SLURM_LOG"
new_conf="$(cat <<EOF
# Written by tests/infra/start_slurm.sh: one node on localhost for the launcher tests.
ClusterName=mlperf-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups in containers: track processes by parent pid and bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
# Finished jobs stay visible to scontrol for 10 minutes, long enough for a test to read JobState.
MinJobAge=600
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SLURM_STATE/ctld
SlurmdSpoolDir=$SLURM_STATE/d
SlurmctldPidFile=/run/slurmctld-mlperf.pid
SlurmdPidFile=/run/slurmd-mlperf.pid
SlurmctldLogFile=$SLURM_LOG/slurmctld.log
SlurmdLogFile=$SLURM_LOG/slurmd.log
${gres_line:+GresTypes=gpu}
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 State=UNKNOWN $gres_line
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
)"
new_gres=""
[[ -n "$gres_line" ]] && new_gres="NodeName=$NODE Name=gpu File=/dev/fakegpu[0-$((FAKE_GPUS - 1))]"

conf_changed=0
if [[ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" != "$new_conf" ]]; then
    printf '%s\n' "$new_conf" > "$CONF_DIR/slurm.conf"; conf_changed=1
fi
if [[ "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" != "$new_gres" ]]; then
    printf '%s\n' "$new_gres" > "$CONF_DIR/gres.conf"; conf_changed=1
fi

# --- daemons --------------------------------------------------------------------------------------
pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [[ "$conf_changed" -eq 1 ]]; then
    # A running daemon would keep the old node definition: restart both on the new config.
    for pidfile in /run/slurmd-mlperf.pid /run/slurmctld-mlperf.pid; do
        if pid_alive "$pidfile"; then kill "$(cat "$pidfile")"; sleep 1; fi
    done
fi
if ! pid_alive /run/slurmctld-mlperf.pid; then
    echo "start_slurm: starting slurmctld ($NODE, $CPUS CPUs${gres_line:+, $gres_line})"
    # -c: start from a clean state, so a stale node/job record from an earlier config cannot linger.
    slurmctld -c || fail "slurmctld did not start"
fi
if ! pid_alive /run/slurmd-mlperf.pid; then
    echo "start_slurm: starting slurmd"
    slurmd || fail "slurmd did not start"
fi

# --- wait for the node --------------------------------------------------------------------------------
state=""
for _ in $(seq 60); do
    state="$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
case "$state" in
    idle|mixed|allocated) ;;
    *) reason="$(scontrol show node "$NODE" 2>&1 | grep -o 'Reason=.*' || true)"
       fail "node $NODE is '${state:-not reported}' after 60 s ($reason)" ;;
esac
echo "start_slurm: OK: node $NODE is $state"
sinfo
