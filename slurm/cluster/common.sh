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

ctld_responds() {
  command -v scontrol >/dev/null 2>&1 || return 1
  [[ -r "$CONF_FILE" ]] || return 1
  scontrol ping 2>/dev/null | grep -q 'is UP'
}

munge_works() {
  command -v munge >/dev/null 2>&1 || return 1
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}
