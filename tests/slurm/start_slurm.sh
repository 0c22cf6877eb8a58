#!/usr/bin/env bash
# Start a single-node Slurm cluster for the tests: munged, slurmctld and slurmd on this host,
# one node with CPUs = nproc, one default partition. Run as root after install_slurm.sh.
# Idempotent: already running daemons are left alone. Returns once `sinfo` shows the node idle.
#
# Environment:
#   SLURM_CONF_FILE   where to write slurm.conf (default /etc/slurm/slurm.conf)
#   SLURM_WAIT_S      how long to wait for the node to become idle (default 90)
set -euo pipefail

CONF=${SLURM_CONF_FILE:-/etc/slurm/slurm.conf}
WAIT_S=${SLURM_WAIT_S:-90}
MARKER="# single-node test cluster written by tests/slurm/start_slurm.sh"
NODE=$(hostname -s)
CPUS=$(nproc)
# Slurm drains a node whose real memory is below the configured value: claim 90 %.
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)

if [[ $(id -u) -ne 0 ]]; then
    echo "start_slurm.sh must run as root (it starts system daemons)" >&2
    exit 1
fi
for cmd in munged slurmctld slurmd sinfo; do
    command -v "$cmd" >/dev/null || { echo "$cmd not found: run tests/slurm/install_slurm.sh" >&2; exit 1; }
done

node_state() { sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n1 | tr -d '*~#'; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [[ "$(node_state)" == "idle" || "$(node_state)" == "mixed" || "$(node_state)" == "allocated" ]]; then
    echo "slurm already running: node $NODE is $(node_state)"
    exit 0
fi

# --- munge -----------------------------------------------------------------------------------
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi
munge -n | unmunge >/dev/null || { echo "munged did not start" >&2; exit 1; }

# --- slurm.conf ------------------------------------------------------------------------------
if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    echo "$CONF exists and was not written by this script; leaving it alone" >&2
else
    mkdir -p "$(dirname "$CONF")"
    cat > "$CONF" <<EOF
$MARKER
ClusterName=genodl-test
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
fi
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# --- daemons ---------------------------------------------------------------------------------
alive /run/slurmctld.pid || slurmctld
for _ in $(seq 20); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
alive /run/slurmd.pid || slurmd

for _ in $(seq "$WAIT_S"); do
    state=$(node_state)
    case "$state" in
        idle|mixed|allocated)
            echo "slurm running: node $NODE ($CPUS CPUs) is $state"
            exit 0 ;;
        down|drained|draining|drain)
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
echo "node $NODE did not become idle (state: $(node_state)); see /var/log/slurm/" >&2
sinfo -R >&2 || true
exit 1
