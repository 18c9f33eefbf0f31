#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to run the SLURM tests (pytest -m slurm) or to try
# `python run.py -m launcher=slurm ...` on a laptop. Debian/Ubuntu, as root (or with sudo).
#
#   tests/slurm/local_cluster.sh start    # install slurm + munge if missing, start them (idempotent)
#   tests/slurm/local_cluster.sh status   # sinfo; exit status 0 when the cluster answers
#   tests/slurm/local_cluster.sh stop     # stop slurmctld, slurmd and munged
#
# One node (this host, as `slurmd -C` sees it) in one default partition `local`; no accounting
# (sacct fails: submitit then logs harmless "Bypassing sacct error" warnings); no cgroups
# (proctrack/linuxproc, task/none), so it also runs in containers. State, spool and logs live in
# $RDPRUNE_SLURM_DIR (default /tmp/rdprune-slurm); the config is written to /etc/slurm/slurm.conf,
# never over one this script did not write.
set -euo pipefail

DIR=${RDPRUNE_SLURM_DIR:-/tmp/rdprune-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by rdprune tests/slurm/local_cluster.sh"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

answering() { timeout 10 sinfo -h >/dev/null 2>&1; }

install() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return
    echo "installing ${missing[*]}"
    # no daemons are started by the packages' scripts (no init system in containers; we start ours)
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    if [ ! -s /etc/munge/munge.key ]; then
        $SUDO mkdir -p /etc/munge
        $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        $SUDO chown munge:munge /etc/munge/munge.key
        $SUDO chmod 400 /etc/munge/munge.key
    fi
    $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
    $SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge
    $SUDO runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "munged did not start" >&2
    exit 1
}

write_conf() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "$CONF exists and was not written by this script: not touching it" >&2
        exit 1
    fi
    local host node
    host=$(hostname)
    # first line of slurmd -C: "NodeName=<host> CPUs=... RealMemory=..." (the second is UpTime)
    node=$(slurmd -C | head -n 1)
    $SUDO mkdir -p /etc/slurm "$DIR/state" "$DIR/spool"
    $SUDO tee "$CONF" >/dev/null <<CONF
$MARK
ClusterName=rdprune
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# schedule every 2 s (default 60/30): a requeued job starts again as soon as it may
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
$node State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
    if answering; then
        echo "slurm already answers"
        sinfo
        return
    fi
    install
    start_munge
    write_conf
    pgrep -x slurmctld >/dev/null || $SUDO slurmctld
    pgrep -x slurmd >/dev/null || $SUDO slurmd
    for _ in $(seq 100); do
        if answering && sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'; then
            sinfo
            return
        fi
        sleep 0.3
    done
    echo "slurm did not come up; logs in $DIR" >&2
    tail -n 20 "$DIR"/slurmctld.log "$DIR"/slurmd.log >&2 || true
    exit 1
}

stop() {
    # by pid file: only the daemons this script started
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" /run/munge/munged.pid; do
        if [ -s "$pidfile" ]; then
            $SUDO kill "$(cat "$pidfile")" 2>/dev/null || true
        fi
    done
    echo "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status)
        if answering; then sinfo; else echo "slurm is not answering"; exit 1; fi
        ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
