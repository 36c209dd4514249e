#!/usr/bin/env bash
# Run a command against a real single-node Slurm on this machine, started for it and stopped
# after it (by PID, pass or fail). Used by CI for the `--slurm` test; also handy to try
# `vcp ablate EXP --slurm` without a cluster:
#
#   bash tools/slurm/with_local_slurm.sh cargo test --release -p vcp-cli --test slurm_cli -- --ignored
#
# Debian's packages (slurmctld, slurmd, slurm-client, munge) are installed when missing (needs
# root and apt). Everything else lives in a fresh state folder: a slurm.conf for this host with
# explicit 127.0.0.1 addresses (an unresolvable host name otherwise makes every command hang),
# no accounting, `SchedulerParameters=batch_sched_delay=0` (array tasks start at once). The
# command sees SLURM_CONF. Readiness: `scontrol ping`, then `sinfo` showing the node idle.
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

need=()
for b in slurmctld slurmd sbatch munged; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || need+=("$b")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "with_local_slurm: missing ${need[*]}; install slurmctld slurmd slurm-client munge (Debian/Ubuntu) as root" >&2
        exit 1
    fi
    echo "with_local_slurm: installing slurmctld slurmd slurm-client munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
fi
export PATH="$PATH:/usr/sbin:/sbin"

STATE=$(mktemp -d /tmp/vcp-slurm.XXXXXX)
HOST=$(hostname -s)
pids=()
stop() {
    local rc=$?
    for f in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munged.pid.ours"; do
        [ -s "$f" ] || continue
        local pid
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        # Gone, or a zombie (dead processes linger briefly on some VMs).
        for _ in $(seq 100); do
            if [ ! -e "/proc/$pid" ] || grep -q '^State:.*[ZX]' "/proc/$pid/status" 2>/dev/null; then
                break
            fi
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$STATE"
    exit $rc
}
trap stop EXIT INT TERM

# munge: reuse a running one, else start ours.
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
    cat /run/munge/munged.pid > "$STATE/munged.pid.ours" 2>/dev/null || true
fi

NODE=$(slurmd -C | head -1 | sed -e 's/NodeName=[^ ]*//' -e 's/RealMemory=[0-9]*//' -e 's/UpTime=.*//')
MEM=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
mkdir -p "$STATE/state" "$STATE/spool" "$STATE/log"
cat > "$STATE/slurm.conf" <<CONF
ClusterName=vcp
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 $NODE RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$STATE/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
ready=0
for _ in $(seq 300); do
    if scontrol ping >/dev/null 2>&1 && [ "$(sinfo -h -o %t 2>/dev/null | head -1)" = "idle" ]; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ $ready != 1 ]; then
    echo "with_local_slurm: Slurm did not become ready; slurmctld log:" >&2
    tail -5 "$STATE/log/slurmctld.log" >&2 || true
    exit 1
fi
echo "with_local_slurm: Slurm ready on $HOST (state in $STATE)" >&2
"$@"
