#!/usr/bin/env bash
# Stops what tests/slurm/start_local_slurm.sh started: slurmd and slurmctld (their pid files in
# $LP_SLURM_DIR) and munged if that script started it. Leaves the packages and the configuration,
# so the next start takes seconds. The test session calls it when it started the cluster itself.
set -uo pipefail
DIR="${LP_SLURM_DIR:-/var/lib/layerprobe-slurm}"

# Alive and not a zombie (a daemon's exit is reaped by PID 1, which in a container may never do it).
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

stop_pid_file() {
    local pid
    pid="$(cat "$1" 2>/dev/null)" && [ -n "$pid" ] && alive "$pid" || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do alive "$pid" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
}

stop_pid_file "$DIR/slurmd.pid"
stop_pid_file "$DIR/slurmctld.pid"
# slurmctld may lose its pid file (two starts at once: the loser removes it on exit); the
# configuration is ours (start_local_slurm.sh's marker), so shut the controller down through it.
if head -n 1 /etc/slurm/slurm.conf 2>/dev/null | grep -qF "written by tests/slurm/start_local_slurm.sh" \
        && scontrol ping 2>/dev/null | grep -q "is UP"; then
    scontrol shutdown >/dev/null 2>&1
    for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q "is UP" || break; sleep 0.1; done
fi
if [ -e "$DIR/started-munged" ]; then
    stop_pid_file /run/munge/munged.pid
    rm -f "$DIR/started-munged"
fi
echo "stop_local_slurm: stopped"
