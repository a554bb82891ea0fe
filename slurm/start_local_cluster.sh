#!/usr/bin/env bash
# Start a real one-node Slurm cluster on this machine (munged, mariadbd + slurmdbd for accounting, slurmctld,
# slurmd), for tests and for trying the launcher presets without a cluster. Needs root and the Debian packages
# slurm-wlm, slurmdbd, mariadb-server and munge (slurm/install.sh). No systemd and no cgroups are needed.
# With accounting, sacct and submitit see real job states (COMPLETED, FAILED, TIMEOUT, CANCELLED); without it
# they read UNKNOWN.
#
#   slurm/start_local_cluster.sh [SCRATCH]     # SCRATCH: where config, state, logs and pids go (default: mktemp -d)
#   export SLURM_CONF=SCRATCH/slurm.conf       # then sinfo, sbatch, srun and submitit talk to this cluster
#   slurm/stop_local_cluster.sh SCRATCH
#
# Every daemon of a cluster lives in its SCRATCH: its own munge key and socket, free ports picked at start, a fresh
# state dir per start, so two clusters (or a system Slurm) do not collide. The pids it started are written to
# SCRATCH/pids; the scratch dir is the only thing printed on stdout (progress goes to stderr).
set -euo pipefail

PARTITION=local
say() { echo "start_local_cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

for binary in munged munge slurmctld slurmd slurmdbd sacctmgr sinfo sbatch mariadbd mariadb-install-db; do
    command -v "$binary" >/dev/null 2>&1 || die "'$binary' not found: run slurm/install.sh (as root) first"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (slurmd starts jobs as their users)"

scratch=${1:-$(mktemp -d -t learn2pd-slurm.XXXXXX)}
mkdir -p "$scratch"
scratch=$(cd "$scratch" && pwd)
conf=$scratch/slurm.conf
export SLURM_CONF=$conf

alive() {  # PID is a live (not zombie) daemon of ours
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat =~ ^[0-9]+\ \((munged|mariadbd|slurmdbd|slurmctld|slurmd)\)\ [^Z] ]]
}

# Idempotent: a cluster already running from this scratch dir is left as it is.
if [ -s "$scratch/pids" ]; then
    all_alive=1
    while read -r pid; do alive "$pid" || all_alive=0; done <"$scratch/pids"
    if [ "$all_alive" = 1 ] && timeout 10 sinfo -h >/dev/null 2>&1; then
        say "already running (pids $(tr '\n' ' ' <"$scratch/pids"))"
        echo "$scratch"
        exit 0
    fi
    say "stale cluster in $scratch: stopping what is left of it"
    bash "$(dirname "$0")/stop_local_cluster.sh" "$scratch" >&2 || true
fi
rm -f "$scratch/pids"

# On any failure from here on: show the logs and stop the daemons this start began.
started=()
ready=0
cleanup_on_failure() {
    [ "$ready" = 1 ] && return
    say "start failed; logs in $scratch/log"
    tail -n 20 "$scratch"/log/*.log >&2 2>/dev/null || true
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -f "$scratch/pids"
}
trap cleanup_on_failure EXIT

# Wait until FILE exists and is not empty (a daemon's pid file), up to SECONDS.
wait_for_file() {
    local file=$1 seconds=$2 i
    for ((i = 0; i < seconds * 10; i++)); do
        [ -s "$file" ] && return 0
        sleep 0.1
    done
    return 1
}

free_port() {  # a free TCP port on the loopback, other than the ones given
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 20000))
        [[ " $* " != *" $port "* ]] || continue
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return 0; }
    done
    die "no free TCP port found"
}

# A fresh state dir per start: stale jobs and node states never come back. Job ids would then restart at 1, and a
# reused submitit folder keyed by job id would hand back an old job's result, so job ids start from the clock.
rm -rf "$scratch"/state.*
state=$scratch/state.$(date +%s%N)
mkdir -p "$state/ctld" "$state/d" "$scratch/log" "$scratch/munge"
chmod 700 "$scratch/munge"
first_job_id=$(($(date +%s) % 60000000 + 1))

# munged: its own key and socket, as root (every client here is root). --force accepts a socket dir that only root
# can reach, e.g. under a pytest tmp dir.
key=$scratch/munge/munge.key
[ -s "$key" ] || { head -c 1024 /dev/urandom >"$key"; chmod 600 "$key"; }
socket=$scratch/munge/munge.socket
[ "${#socket}" -lt 100 ] || die "scratch path too long for a unix socket ($socket); pass a shorter SCRATCH"
munged --force --socket="$socket" --key-file="$key" --pid-file="$scratch/munge/munged.pid" \
    --log-file="$scratch/log/munged.log" --seed-file="$scratch/munge/munged.seed"
wait_for_file "$scratch/munge/munged.pid" 10 || die "munged did not start"
started+=("$(cat "$scratch/munge/munged.pid")")

# The node line as slurmd sees this machine (CPUs, sockets, cores, memory); NodeName is the host name.
node_line=$(slurmd -C | head -n 1)
node=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
[ -n "$node" ] || die "cannot parse 'slurmd -C': $node_line"
ctld_port=$(free_port)
slurmd_port=$(free_port "$ctld_port")
db_port=$(free_port "$ctld_port" "$slurmd_port")
dbd_port=$(free_port "$ctld_port" "$slurmd_port" "$db_port")

# Accounting: a MariaDB of its own (fresh data dir, socket and loopback port in SCRATCH) behind slurmdbd.
db=$scratch/mariadb
rm -rf "$db"
mkdir -p "$db"
mariadb-install-db --no-defaults --datadir="$db/data" --user=root --auth-root-authentication-method=normal \
    --skip-test-db >"$scratch/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed"
mariadbd --no-defaults --datadir="$db/data" --user=root --bind-address=127.0.0.1 --port="$db_port" \
    --socket="$db/mariadb.sock" --pid-file="$db/mariadbd.pid" --log-error="$scratch/log/mariadbd.log" \
    --skip-name-resolve --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
wait_for_file "$db/mariadbd.pid" 30 || die "mariadbd did not start"
for ((i = 0; i < 300; i++)); do [ -S "$db/mariadb.sock" ] && break; sleep 0.1; done
[ -S "$db/mariadb.sock" ] || die "mariadbd does not listen"
started+=("$(cat "$db/mariadbd.pid")")

cat >"$scratch/slurmdbd.conf" <<EOF
# Written by slurm/start_local_cluster.sh: accounting for the test cluster in $scratch
AuthType=auth/munge
AuthInfo=socket=$socket
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$scratch/slurmdbd.pid
LogFile=$scratch/log/slurmdbd.log
EOF
chmod 600 "$scratch/slurmdbd.conf"  # slurmdbd refuses a config others can read

cat >"$conf" <<EOF
# Written by slurm/start_local_cluster.sh: a one-node test cluster; everything lives in $scratch
ClusterName=learn2pd-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=10
# (cred_expire also delays the restart of a requeued job: 10 s here instead of 120)
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmctldLogFile=$scratch/log/slurmctld.log
SlurmdLogFile=$scratch/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$socket
KillWait=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
FirstJobId=$first_job_id
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

# slurmdbd reads slurmdbd.conf beside $SLURM_CONF; the cluster is registered before slurmctld reports to it
rm -f "$scratch/slurmdbd.pid" "$scratch/slurmctld.pid" "$scratch/slurmd.pid"
slurmdbd
wait_for_file "$scratch/slurmdbd.pid" 30 || die "slurmdbd did not start"
started+=("$(cat "$scratch/slurmdbd.pid")")
for ((i = 0; i < 50; i++)); do
    sacctmgr -i add cluster learn2pd-local >/dev/null 2>&1 && break
    sleep 0.2
done
sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx learn2pd-local || die "slurmdbd does not answer"
slurmctld -f "$conf"
wait_for_file "$scratch/slurmctld.pid" 15 || die "slurmctld did not start"
started+=("$(cat "$scratch/slurmctld.pid")")
slurmd -f "$conf"
wait_for_file "$scratch/slurmd.pid" 15 || die "slurmd did not start"
started+=("$(cat "$scratch/slurmd.pid")")
printf '%s\n' "${started[@]}" >"$scratch/pids"

for ((i = 0; i < 300; i++)); do
    [ "$(sinfo -h -N -n "$node" -o '%T' 2>/dev/null)" = idle ] && break
    sleep 0.1
done
state_now=$(sinfo -h -N -n "$node" -o '%T' 2>/dev/null || true)
[ "$state_now" = idle ] || die "node $node is '${state_now:-not answering}' after 30 s, not idle"
ready=1
say "node $node idle in partition '$PARTITION' (pids $(tr '\n' ' ' <"$scratch/pids")); export SLURM_CONF=$conf"
echo "$scratch"
