#!/usr/bin/env bash
# A real single-machine SLURM cluster for tests and CI: munged, MariaDB + slurmdbd (so `sacct` works),
# slurmctld and slurmd, all on this host, started as plain background daemons.
#
#   scripts/slurm-cluster.sh [start]   install (apt), configure, start, wait until the node is idle
#   scripts/slurm-cluster.sh stop      stop the daemons (packages, config and job history stay)
#   scripts/slurm-cluster.sh status    exit 0 when slurmctld answers and the node takes jobs
#
# Run as root on Debian 12 (bookworm); it needs nothing but apt. No systemd and no cgroups: job
# processes are tracked through /proc. Idempotent: run again while the cluster is up with the same
# config, it only checks and returns (well under a second); a changed config restarts the daemons.
#
# Environment:
#   SLURM_CLUSTER_TIMEOUT     seconds to wait for each daemon and for the node to be idle (default 60)
#   SLURM_CLUSTER_NAME        ClusterName (default effnet)
#   SLURM_CLUSTER_ACCOUNTING  1 (default): slurmdbd + MariaDB, so sacct answers. submitit polls sacct
#                             to learn that a job ended; without it, a job that dies without writing
#                             its result (killed, cancelled, node lost) makes job.result() wait forever.
#                             0: no accounting (fewer packages, ~2 s faster start).
set -euo pipefail

ACTION=${1:-start}
TIMEOUT=${SLURM_CLUSTER_TIMEOUT:-60}
CLUSTER=${SLURM_CLUSTER_NAME:-effnet}
ACCOUNTING=${SLURM_CLUSTER_ACCOUNTING:-1}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
DBD_PID=/run/slurmdbd.pid
MUNGE_PID=/run/munge/munged.pid
DB_PID=/run/mysqld/mysqld.pid
DB_SOCK=/run/mysqld/mysqld.sock
DB_PASS=effnet-test-cluster # a throwaway cluster's database, reachable only through the local socket

PACKAGES=(slurm-wlm slurmctld slurmd slurm-client munge)
if [[ $ACCOUNTING == 1 ]]; then PACKAGES+=(slurmdbd mariadb-server); fi

START=$(date +%s.%N)
say() { printf 'slurm-cluster: %s\n' "$*"; }
die() {
    printf 'slurm-cluster: error: %s\n' "$*" >&2
    exit 1
}
elapsed() { awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

alive() { # alive PIDFILE: the daemon whose pid is in PIDFILE is running
    local pid
    [[ -s $1 ]] && pid=$(<"$1") && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

host() { hostname -s; }

node_state() { # the node's state as sinfo prints it (idle, mixed, allocated, down*, ...), or nothing
    timeout 10 sinfo -h -N -n "$(host)" -o '%T' 2>/dev/null | head -n1 || true
}

usable() {
    case "$(node_state)" in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
    esac
}

version() { sinfo --version 2>/dev/null || echo "slurm (unknown version)"; }

wait_for() { # wait_for COMMAND...: retry COMMAND every 0.2 s until it succeeds or TIMEOUT passes
    local deadline=$(($(date +%s) + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < deadline)) || return 1
        sleep 0.2
    done
}

diagnose() { # print what is known about the cluster to stderr
    {
        echo "--- sinfo"
        timeout 5 sinfo -N -l 2>&1 || true
        echo "--- scontrol show node"
        timeout 5 scontrol show node 2>&1 || true
        local f
        for f in "$LOGDIR"/slurmctld.log "$LOGDIR"/slurmd.log "$LOGDIR"/slurmdbd.log "$LOGDIR"/mariadb.log \
            /var/log/munge/munged.log; do
            [[ -f $f ]] || continue
            echo "--- tail $f"
            tail -n 20 "$f" 2>&1 || true
        done
    } >&2
}

fail() { # fail MESSAGE: the error, the logs, exit 1
    printf 'slurm-cluster: error: %s\n' "$*" >&2
    diagnose
    exit 1
}

stop_daemon() { # stop_daemon NAME PIDFILE
    local name=$1 pidfile=$2 pid i
    if ! alive "$pidfile"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name ($pid) did not stop in 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    say "stopped $name ($pid)"
}

stop() {
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon slurmdbd "$DBD_PID"
    stop_daemon mariadbd "$DB_PID"
    stop_daemon munged "$MUNGE_PID"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian 12 (missing: ${missing[*]})"
    say "installing ${missing[*]} with apt-get"
    # Keep the maintainer scripts from starting daemons: there is no init system to start them.
    local policy=/usr/sbin/policy-rc.d ours=0 ok=1
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null || ok=0
    ((ours)) && rm -f "$policy"
    ((ok)) || die "apt-get install ${PACKAGES[*]} failed"
}

setup_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
}

render_slurm_conf() { # the slurm.conf for this host, on stdout
    local hw
    # This host as slurmd sees it: CPUs, Boards, Sockets, Cores, Threads, RealMemory (UpTime dropped).
    hw=$(slurmd -C | head -n1 | sed -e 's/ *UpTime=.*//' -e "s/^NodeName=[^ ]*/NodeName=$(host)/")
    [[ $hw == NodeName=* ]] || die "slurmd -C gave no node line: $hw"
    local accounting="AccountingStorageType=accounting_storage/none"
    if [[ $ACCOUNTING == 1 ]]; then
        accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
    fi
    cat <<EOF
# Written by scripts/slurm-cluster.sh: a single-node test cluster (no systemd, no cgroups).
ClusterName=$CLUSTER
SlurmctldHost=$(host)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# Inside a container: track job processes through /proc, no task binding or usage sampling.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
$accounting
# Every CPU is a schedulable unit; memory is not a consumable, so 1-CPU jobs share the node.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Reject at submission a job that can never run here (e.g. more CPUs than the node has) instead of
# leaving it pending forever. Schedule at once and every 2 s (defaults: batch jobs are held back
# 3 s; the main and backfill loops run every 60 s and 30 s).
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
# Batch jobs can be requeued (scontrol requeue; submitit requeues itself on its timeout signal).
# A requeued job may start again cred_expire + 1 s later (default 120 s).
JobRequeue=1
AuthInfo=cred_expire=10
ReturnToService=2
# SIGTERM -> SIGKILL after 5 s at the time limit or scancel (default 30 s).
KillWait=5
MinJobAge=300
InactiveLimit=0
Waittime=0
$hw State=UNKNOWN
PartitionName=debug Nodes=$(host) Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

render_dbd_conf() {
    cat <<EOF
# Written by scripts/slurm-cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$DBD_PID
LogFile=$LOGDIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

configs_current() { # the files on disk are what this host needs
    [[ -f $CONF && "$(render_slurm_conf)" == "$(<"$CONF")" ]] || return 1
    [[ $ACCOUNTING != 1 ]] || [[ -f $DBD_CONF && "$(render_dbd_conf)" == "$(<"$DBD_CONF")" ]]
}

write_configs() { # write the config files; returns 0 when one of them changed
    local new changed=1
    # The node must resolve: srun and slurmd connect back to it by name.
    getent hosts "$(host)" >/dev/null || echo "127.0.1.1 $(host)" >>/etc/hosts
    install -d -m 0755 /etc/slurm "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd
    new=$(render_slurm_conf)
    if [[ ! -f $CONF || "$new" != "$(<"$CONF")" ]]; then
        printf '%s\n' "$new" >"$CONF"
        say "wrote $CONF ($(grep '^NodeName=' "$CONF"))"
        changed=0
    fi
    if [[ $ACCOUNTING == 1 ]]; then
        new=$(render_dbd_conf)
        if [[ ! -f $DBD_CONF || "$new" != "$(<"$DBD_CONF")" ]]; then
            (
                umask 077
                printf '%s\n' "$new" >"$DBD_CONF"
            )
            changed=0
        fi
        chmod 0600 "$DBD_CONF"
    fi
    return $changed
}

start_mariadb() {
    if ! alive "$DB_PID"; then
        install -d -o mysql -g mysql -m 0755 /run/mysqld
        [[ -d /var/lib/mysql/mysql ]] ||
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null ||
            die "mariadb-install-db failed"
        # mariadbd does not daemonize: detach it from this shell and its output.
        setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --pid-file="$DB_PID" \
            --socket="$DB_SOCK" --bind-address=127.0.0.1 --skip-name-resolve \
            </dev/null >>"$LOGDIR/mariadb.log" 2>&1 &
    fi
    wait_for mariadb-admin --socket="$DB_SOCK" ping || fail "MariaDB did not answer in ${TIMEOUT}s"
    mariadb --socket="$DB_SOCK" -e "
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" ||
        fail "could not create the slurm_acct_db database"
}

start_slurmdbd() {
    alive "$DBD_PID" || /usr/sbin/slurmdbd || fail "slurmdbd did not start"
    wait_for sacctmgr -n list cluster || fail "slurmdbd did not answer in ${TIMEOUT}s"
    if [[ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster 2>/dev/null)" ]]; then
        sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster $CLUSTER failed"
    fi
}

wait_idle() {
    local deadline=$(($(date +%s) + TIMEOUT)) state resumed=0
    while :; do
        state=$(node_state)
        case "$state" in
        idle | mixed | allocated | completing) return 0 ;;
        down* | drain* | fail*)
            if ((!resumed)); then
                scontrol update NodeName="$(host)" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
        esac
        (($(date +%s) < deadline)) ||
            fail "node $(host) not idle after ${TIMEOUT}s (state: '${state:-no answer from slurmctld}')"
        sleep 0.2
    done
}

all_alive() {
    alive "$MUNGE_PID" && alive "$CTLD_PID" && alive "$SLURMD_PID" &&
        { [[ $ACCOUNTING != 1 ]] || { alive "$DB_PID" && alive "$DBD_PID"; }; }
}

start() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    # Fast path: everything up with the config this host needs.
    if command -v slurmd >/dev/null && all_alive && configs_current && usable; then
        say "$(version): already up, node $(host) $(node_state) ($(elapsed) s)"
        return 0
    fi
    install_packages
    setup_munge
    if write_configs; then
        # New config: restart the slurm daemons that run with the old one.
        stop_daemon slurmd "$SLURMD_PID"
        stop_daemon slurmctld "$CTLD_PID"
        stop_daemon slurmdbd "$DBD_PID"
    fi
    if ! alive "$MUNGE_PID"; then
        runuser -u munge -- /usr/sbin/munged --force || fail "munged did not start"
    fi
    wait_for bash -c 'munge -n </dev/null | unmunge' || fail "munge round trip failed"
    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    alive "$CTLD_PID" || /usr/sbin/slurmctld || fail "slurmctld did not start"
    alive "$SLURMD_PID" || /usr/sbin/slurmd || fail "slurmd did not start"
    wait_idle
    say "$(version): up, node $(host) $(node_state), $(sinfo -h -N -o '%c CPUs, %m MB' | head -n1)," \
        "accounting $([[ $ACCOUNTING == 1 ]] && echo on || echo off) ($(elapsed) s)"
}

case "$ACTION" in
start) start ;;
stop)
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    stop
    ;;
status)
    if command -v sinfo >/dev/null && usable; then
        say "$(version): up, node $(host) $(node_state)"
    else
        say "down"
        exit 1
    fi
    ;;
*) die "unknown action '$ACTION'; use start, stop or status" ;;
esac
