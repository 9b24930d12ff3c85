# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts
# Shared settings and helpers for up.sh / down.sh (sourced, not executed).
#
# The development cluster is two slurmd daemons (nodes n1, n2) plus one
# slurmctld, all running as root on this one machine, with every piece of
# state (config, spool, logs, pid files, saved controller state, job
# completion log) under one directory.

# --- layout ---------------------------------------------------------------

SLURM_DIR="${HPCSWEEP_SLURM_DIR:-/tmp/hpcsweep-slurm}"
case "$SLURM_DIR" in
  /*) ;;
  *) SLURM_DIR="$PWD/$SLURM_DIR" ;;
esac
SLURM_DIR="${SLURM_DIR%/}"

CONF_FILE="$SLURM_DIR/slurm.conf"
CGROUP_CONF_FILE="$SLURM_DIR/cgroup.conf" # task/cgroup reads it next to slurm.conf
JOBCOMP_FILE="$SLURM_DIR/jobcomp.txt"
STATE_DIR="$SLURM_DIR/state"
SPOOL_DIR="$SLURM_DIR/spool"
LOG_DIR="$SLURM_DIR/log"
RUN_DIR="$SLURM_DIR/run"
CTLD_PIDFILE="$RUN_DIR/slurmctld.pid"
MUNGE_MARKER="$RUN_DIR/munged.started-by-up"
LOCK_FILE="$RUN_DIR/cluster.lock"

MUNGE_SOCKET_DIR=/run/munge
MUNGE_PIDFILE="$MUNGE_SOCKET_DIR/munged.pid"
MUNGE_KEY=/etc/munge/munge.key

NODES=(n1 n2)
NODE_LIST="n[1-2]"

# Ports away from the defaults (6817/6818) so a system Slurm can coexist.
CTLD_PORT="${HPCSWEEP_SLURM_CTLD_PORT:-16817}"
SLURMD_BASE_PORT="${HPCSWEEP_SLURM_SLURMD_BASE_PORT:-17000}" # n1 -> +1, n2 -> +2

# Slurm client commands run by these scripts must use our config.
export SLURM_CONF="$CONF_FILE"

# --- helpers ----------------------------------------------------------------

log() {
  printf '[%s] %s\n' "${SCRIPT_NAME:-cluster}" "$*" >&2
}

die() {
  log "ERROR: $*"
  exit 1
}

slurmd_pidfile() {
  printf '%s/slurmd-%s.pid\n' "$RUN_DIR" "$1"
}

# pid_running PID [COMM]: true if PID is a live (not zombie) process, named
# COMM when given. A killed daemon can linger as a zombie for a while here
# (kill -0 still succeeds), so look at its state in /proc.
pid_running() {
  local pid="$1" comm="${2:-}" stat
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  [[ -n "$stat" ]] || return 1
  # /proc/PID/stat: "PID (COMM) STATE ..."; COMM may contain spaces/parens.
  case "${stat##*) }" in
    Z* | X* | x*) return 1 ;;
  esac
  [[ -z "$comm" || "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]]
}

# live_pid PIDFILE COMM: print the pid recorded in PIDFILE if that process is
# alive and its command name is COMM (guards against recycled pids).
live_pid() {
  local pidfile="$1" comm="$2" pid
  [[ -r "$pidfile" ]] || return 1
  pid="$(tr -dc '0-9' <"$pidfile")"
  [[ -n "$pid" ]] || return 1
  pid_running "$pid" "$comm" || return 1
  printf '%s\n' "$pid"
}

# --- what this machine has (both nodes declare it, see up.sh) --------------

# machine_cpus: the CPUs this process may run on (nproc honours affinity and
# cpusets, unlike /proc/cpuinfo).
machine_cpus() {
  nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
}

# machine_memory_mb: MemTotal in MiB (Slurm's RealMemory unit), the value
# `slurmd -C` reports, lowered to the memory cgroup's limit when there is one:
# inside a container /proc/meminfo shows the host's memory, not ours.
machine_memory_mb() {
  local kib limit file
  kib="$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)"
  [[ "$kib" =~ ^[0-9]+$ ]] || die "cannot read MemTotal from /proc/meminfo"
  for file in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
    limit="$(cat "$file" 2>/dev/null)" || continue
    # "max" (v2) or a huge number (v1's "unlimited") fail these tests.
    if [[ "$limit" =~ ^[0-9]+$ ]] && ((limit / 1024 < kib)); then
      kib=$((limit / 1024))
    fi
  done
  printf '%d\n' $((kib / 1024))
}

# --- stopping daemons (down.sh, and up.sh when slurm.conf changed) ----------

STOP_TIMEOUT=20

# stop_pid PID NAME: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pid="$1" name="$2" i
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    pid_running "$pid" || return 0
    sleep 0.2
  done
  log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_daemon() {
  local pidfile="$1" comm="$2" name="$3" pid
  if pid="$(live_pid "$pidfile" "$comm")"; then
    stop_pid "$pid" "$name"
  fi
  rm -f "$pidfile"
}

# stop_slurm_daemons: the slurmds and slurmctld (not munged). Running jobs
# survive a restart on the same node declarations: their slurmstepd processes
# are separate, and slurmctld saves its state in STATE_DIR and reads it back at
# the next start (a changed CPU layout aborts them instead, see up.sh).
stop_slurm_daemons() {
  local node
  for node in "${NODES[@]}"; do
    stop_daemon "$(slurmd_pidfile "$node")" slurmd "slurmd $node"
  done
  stop_daemon "$CTLD_PIDFILE" slurmctld slurmctld
}

ctld_responds() {
  command -v scontrol >/dev/null 2>&1 || return 1
  [[ -r "$CONF_FILE" ]] || return 1
  scontrol ping 2>/dev/null | grep -q 'is UP'
}

munge_works() {
  command -v munge >/dev/null 2>&1 || return 1
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}
