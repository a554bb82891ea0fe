#!/usr/bin/env bash
# Stop a cluster started by slurm/start_local_cluster.sh: cancel its jobs, then end exactly the daemons listed in
# SCRATCH/pids (a pid whose process is no longer one of those daemons is left alone).
#
#   slurm/stop_local_cluster.sh SCRATCH
set -uo pipefail

scratch=${1:?usage: slurm/stop_local_cluster.sh SCRATCH (the dir start_local_cluster.sh printed)}
pids_file=$scratch/pids
if [ ! -s "$pids_file" ]; then
    echo "stop_local_cluster: no pids in $pids_file; nothing to stop" >&2
    exit 0
fi

ours() {  # is PID still one of the daemons we started, alive (not a zombie, not a reused pid)?
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat =~ ^[0-9]+\ \((munged|mariadbd|slurmdbd|slurmctld|slurmd)\)\ [^Z] ]]
}

# Jobs of this cluster only (SLURM_CONF points at it): their slurmstepd processes outlive slurmd otherwise.
if [ -f "$scratch/slurm.conf" ] && command -v squeue >/dev/null 2>&1; then
    jobs=$(SLURM_CONF=$scratch/slurm.conf timeout 5 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        SLURM_CONF=$scratch/slurm.conf timeout 5 scancel $jobs 2>/dev/null || true
        sleep 1
    fi
fi

# Reverse start order: slurmd, slurmctld, slurmdbd, mariadbd, munged.
mapfile -t pids < <(tac "$pids_file")
for pid in "${pids[@]}"; do
    ours "$pid" && kill -TERM "$pid" 2>/dev/null
done
for pid in "${pids[@]}"; do
    for _ in $(seq 100); do
        ours "$pid" || break
        sleep 0.1
    done
    if ours "$pid"; then
        echo "stop_local_cluster: pid $pid did not stop after 10 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
done
rm -f "$pids_file"
echo "stop_local_cluster: stopped ${pids[*]}" >&2
