#!/usr/bin/env bash
# Start a two-node development Slurm cluster on this one machine.
#
# Why: hpcsweep submits its sweeps as Slurm jobs (arrays, multi-node DDP,
# requeue on SIGUSR1). Development and CI need a real scheduler to test that
# path, so this script runs munged, one slurmctld and two slurmd daemons
# (nodes n1 and n2, partition "debug") on localhost. Each node declares this
# whole machine -- its memory and CPUs, at least 4 CPUs -- so a grid that
# keeps params.yaml's slurm defaults fits a node here as it would a real one.
#
# Usage:   eval "$(slurm/cluster/up.sh)"
#
# stdout carries ONLY `export ...` lines (SLURM_CONF, HPCSWEEP_SLURM_DIR,
# HPCSWEEP_SLURM_JOBCOMP); every progress message goes to stderr. Idempotent:
# when the cluster is already up with the slurm.conf this script would write,
# it starts nothing and prints the exports again; when that slurm.conf differs
# (this script changed, or the machine did), it rewrites it and restarts
# slurmctld and the slurmds, since Slurm applies changed node declarations
# only at start -- unless a job is running, which the restart would abort:
# then it stops with an error. Stop the cluster with slurm/cluster/down.sh.
#
# Environment:
#   HPCSWEEP_SLURM_DIR       state directory (default /tmp/hpcsweep-slurm)
#   HPCSWEEP_SLURM_TIMEOUT   seconds to wait for both nodes (default 60)
#   HPCSWEEP_SLURM_CRED_EXPIRE   AuthInfo cred_expire, also the delay before
#                            a requeued job may start again (default 10)
#   HPCSWEEP_SLURM_CTLD_PORT, HPCSWEEP_SLURM_SLURMD_BASE_PORT   ports
#   HPCSWEEP_SLURM_MAX_ARRAY_SIZE   MaxArraySize (default 4: see below; benchmarks/scale.py
#                            uses a real site's 1001)
#
# Needs root to install packages and start daemons (SlurmUser=root); a
# non-root caller gets the exports only if the cluster is already up.
set -euo pipefail

SCRIPT_NAME="up.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/cluster/common.sh
source "$HERE/common.sh"

TIMEOUT="${HPCSWEEP_SLURM_TIMEOUT:-60}"
CRED_EXPIRE="${HPCSWEEP_SLURM_CRED_EXPIRE:-10}"
MAX_ARRAY_SIZE="${HPCSWEEP_SLURM_MAX_ARRAY_SIZE:-4}"

# Keep the caller's stdout (fd 3) for the export lines; everything else,
# including the output of any command run below, goes to stderr.
exec 3>&1 1>&2

print_exports() {
  printf 'export SLURM_CONF=%q\n' "$CONF_FILE" >&3
  printf 'export HPCSWEEP_SLURM_DIR=%q\n' "$SLURM_DIR" >&3
  printf 'export HPCSWEEP_SLURM_JOBCOMP=%q\n' "$JOBCOMP_FILE" >&3
}

# spawn_daemon LOGFILE CMD...: run CMD (which daemonizes itself) with stdin
# from /dev/null, stdout+stderr appended to LOGFILE and every other inherited
# descriptor closed. Otherwise the daemon would keep our fd 3 -- the caller's
# stdout -- open, and `eval "$(up.sh)"` would wait for EOF forever (munged
# does not close inherited descriptors), and it would hold the lock on fd 9.
spawn_daemon() {
  local logfile="$1" fd
  shift
  (
    for fd in /proc/self/fd/*; do
      fd="${fd##*/}"
      if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
        eval "exec ${fd}>&-"
      fi
    done
    exec "$@"
  ) </dev/null >>"$logfile" 2>&1
}

# Show the tail of a daemon's startup output after a failed start.
show_log_tail() {
  [[ -s "$1" ]] || return 0
  log "last lines of $1:"
  tail -n 15 "$1" >&2
}

is_root() {
  [[ "$(id -u)" -eq 0 ]]
}

install_packages() {
  local missing=0 cmd
  for cmd in slurmctld slurmd sinfo munged; do
    command -v "$cmd" >/dev/null 2>&1 || missing=1
  done
  [[ "$missing" -eq 0 ]] && return 0
  is_root || die "slurm-wlm/munge are not installed and we are not root"
  log "installing slurm-wlm and munge (apt-get)..."
  local apt_log
  apt_log="$(mktemp /tmp/hpcsweep-slurm-apt.XXXXXX)"
  if ! {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends slurm-wlm munge
  } >"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    die "installing slurm-wlm munge failed (full log: $apt_log)"
  fi
  rm -f "$apt_log"
}

ensure_munge_key() {
  if [[ ! -s "$MUNGE_KEY" ]]; then
    log "creating $MUNGE_KEY"
    install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile="$MUNGE_KEY"
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
  fi
  chown munge:munge "$MUNGE_KEY"
  chmod 0400 "$MUNGE_KEY"
}

start_munged() {
  if munge_works; then
    log "munged already running"
    return 0
  fi
  ensure_munge_key
  install -d -o munge -g munge -m 0755 "$MUNGE_SOCKET_DIR"
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  log "starting munged"
  # A socket/pid left by a munged that died would make it refuse to start.
  if ! live_pid "$MUNGE_PIDFILE" munged >/dev/null; then
    rm -f "$MUNGE_SOCKET_DIR/munge.socket.2" "$MUNGE_SOCKET_DIR/munge.socket.2.lock" "$MUNGE_PIDFILE"
  fi
  if ! spawn_daemon "$LOG_DIR/munged.out" runuser -u munge -- /usr/sbin/munged; then
    show_log_tail "$LOG_DIR/munged.out"
    die "munged failed to start"
  fi
  touch "$MUNGE_MARKER"
  local i
  for ((i = 0; i < 50; i++)); do
    munge_works && return 0
    sleep 0.2
  done
  die "munged started but 'munge -n | unmunge' does not work"
}

make_dirs() {
  install -d -m 0755 "$SLURM_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"
  local node
  for node in "${NODES[@]}"; do
    install -d -m 0755 "$SPOOL_DIR/$node"
  done
}

# What each node declares. Both nodes declare the whole machine rather than
# half of it each: a dev node stands for one real node, and each must take one
# job with params.yaml's defaults (mem 16G, cpus_per_task 4) -- half of a
# 24 GiB machine would refuse it. SlurmdParameters=config_overrides makes each
# slurmd register what slurm.conf declares, not what it detects, so the two
# nodes may declare the same memory and CPUs, and at least MIN_NODE_CPUS CPUs
# (params.yaml's default cpus_per_task) on a smaller machine: CPUs are only
# time-shared here (nothing binds cores, see below), like the two nodes themselves.
# RealMemory is what the machine has, with no reserve for the OS: each node
# stands for a whole real node, so a reserve would only refuse jobs the
# machine can hold. A machine smaller than the defaults still starts; it
# declares what it has and refuses what does not fit, as a real node would.
#
# Memory is a consumable (CR_Core_Memory) and, where this machine lets slurmd
# make cgroup v1 memory groups, enforced as on a real site: task/cgroup with
# ConstrainRAMSpace puts each job and step in a memory cgroup of its --mem,
# the kernel kills what grows past it, and Slurm records why (OUT_OF_MEMORY,
# or FAILED with DerivedExitCode 0:125 when the srun step died), which
# `hpcsweep status` must show. Cores are not constrained: the nodes declare
# more CPUs than the machine has, and a cpuset of absent cores would fail.
# jobacct_gather/linux with OverMemoryKill was tried first: it kills a job past
# --mem too, but Slurm then records a plain FAILED (signal 9), no sign of memory.
MIN_NODE_CPUS=4
MEMORY_CGROUP=/sys/fs/cgroup/memory

# True when slurmd (root) can make memory cgroups here: the cgroup v1 memory
# controller is mounted read-write. Read from the mount table, not tried, so
# that a caller who is not root renders the same slurm.conf as root did.
memory_cgroup_works() {
  awk -v dir="$MEMORY_CGROUP" '
    $2 == dir && $3 == "cgroup" && $4 ~ /(^|,)rw(,|$)/ { found = 1 }
    END { exit !found }' /proc/mounts
}

task_plugin() {
  if memory_cgroup_works; then
    echo task/cgroup
  else
    echo task/none
  fi
}

node_cpus() {
  local cpus
  cpus="$(machine_cpus)"
  printf '%d\n' $((cpus > MIN_NODE_CPUS ? cpus : MIN_NODE_CPUS))
}

# cgroup.conf, read next to slurm.conf by task/cgroup (see render_config).
render_cgroup_config() {
  cat <<EOF
# Generated by slurm/cluster/up.sh -- edits are overwritten on the next run.
CgroupPlugin=cgroup/v1
CgroupMountpoint=${MEMORY_CGROUP%/*}
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainCores=no
ConstrainDevices=no
EOF
}

render_config() {
  local host i port cpus memory
  host="$(hostname -s)"
  cpus="$(node_cpus)"
  memory="$(machine_memory_mb)"
  cat <<EOF
# Generated by slurm/cluster/up.sh -- edits are overwritten on the next run.
# Two-node development cluster on one machine (see up.sh for why).
ClusterName=hpcsweep
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_BASE_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may only start again after cred_expire+1 seconds (Slurm's
# default 120, minimum 5); 10 keeps requeue tests fast and still covers step
# launch on a loaded machine.
AuthInfo=cred_expire=${CRED_EXPIRE}

StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}/%n
SlurmctldPidFile=${CTLD_PIDFILE}
SlurmdPidFile=${RUN_DIR}/slurmd-%n.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info

ProctrackType=proctrack/linuxproc
TaskPlugin=$(task_plugin)
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Frequent scheduling passes: requeued/array jobs start within seconds.
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides

AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=${JOBCOMP_FILE}

ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=300
# Small on purpose: a grid with more points of one shape becomes several job arrays, and the
# cluster tests run that path with a handful of points (a real site's default is 1001).
MaxArraySize=${MAX_ARRAY_SIZE}
MaxJobCount=50000

EOF
  for i in "${!NODES[@]}"; do
    port=$((SLURMD_BASE_PORT + i + 1))
    printf 'NodeName=%s NodeAddr=127.0.0.1 Port=%d CPUs=%d RealMemory=%d State=UNKNOWN\n' \
      "${NODES[$i]}" "$port" "$cpus" "$memory"
  done
  printf 'PartitionName=debug Nodes=%s Default=YES MaxTime=INFINITE State=UP\n' "$NODE_LIST"
}

config_current() {
  [[ -f "$CONF_FILE" && -f "$CGROUP_CONF_FILE" ]] \
    && render_config | cmp -s - "$CONF_FILE" \
    && render_cgroup_config | cmp -s - "$CGROUP_CONF_FILE"
}

# write_file_if_changed FILE RENDER: write RENDER's output to FILE when it
# differs from what FILE holds.
write_file_if_changed() {
  local file="$1" render="$2" tmp
  tmp="$(mktemp "$SLURM_DIR/.${file##*/}.XXXXXX")"
  "$render" >"$tmp"
  if [[ -f "$file" ]] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 0
  fi
  chmod 0644 "$tmp"
  mv -f "$tmp" "$file"
  log "wrote $file"
}

write_config() {
  write_file_if_changed "$CGROUP_CONF_FILE" render_cgroup_config
  write_file_if_changed "$CONF_FILE" render_config
}

start_slurmctld() {
  if live_pid "$CTLD_PIDFILE" slurmctld >/dev/null; then
    log "slurmctld already running"
    return 0
  fi
  log "starting slurmctld"
  if ! spawn_daemon "$LOG_DIR/slurmctld.out" slurmctld -f "$CONF_FILE"; then
    show_log_tail "$LOG_DIR/slurmctld.out"
    die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
  fi
}

start_slurmd() {
  local node="$1"
  if live_pid "$(slurmd_pidfile "$node")" slurmd >/dev/null; then
    log "slurmd $node already running"
    return 0
  fi
  log "starting slurmd $node"
  if ! spawn_daemon "$LOG_DIR/slurmd-$node.out" slurmd -f "$CONF_FILE" -N "$node"; then
    show_log_tail "$LOG_DIR/slurmd-$node.out"
    die "slurmd $node failed to start; see $LOG_DIR/slurmd-$node.log"
  fi
}

wait_for_controller() {
  local deadline=$((SECONDS + TIMEOUT))
  until ctld_responds; do
    ((SECONDS < deadline)) \
      || die "slurmctld did not answer 'scontrol ping' within ${TIMEOUT}s; see $LOG_DIR/slurmctld.log"
    sleep 0.5
  done
}

# Print "NODE STATE" lines (sinfo compact state, e.g. idle, mix, down*, drain).
node_states() {
  sinfo -h -N -n "$NODE_LIST" -o '%N %t' 2>/dev/null | sort -u
}

# Usable: responding and not down/drained (idle, or busy with jobs).
node_usable() {
  case "$1" in
    idle | mix | alloc | comp | compg) return 0 ;;
    *) return 1 ;;
  esac
}

wait_for_nodes() {
  local deadline=$((SECONDS + TIMEOUT)) states node state ready resumed=0
  while :; do
    states="$(node_states)"
    ready=0
    while read -r node state; do
      [[ -n "$node" ]] || continue
      if node_usable "$state"; then
        ready=$((ready + 1))
      elif [[ "$resumed" -eq 0 && "$state" =~ ^(down|drain|drng|fail|failg)$ ]]; then
        # Left DOWN/DRAINED by an earlier run; the slurmd answers, so resume.
        log "node $node is $state; resuming"
        scontrol update nodename="$NODE_LIST" state=resume 2>/dev/null || true
        resumed=1
      fi
    done <<<"$states"
    if [[ "$ready" -eq "${#NODES[@]}" ]]; then
      log "nodes ready: $(tr '\n' ' ' <<<"$states")"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      log "node states: $(tr '\n' ' ' <<<"$states")"
      die "nodes did not become idle within ${TIMEOUT}s; see $LOG_DIR/slurmd-*.log"
    fi
    sleep 0.5
  done
}

any_running() {
  live_pid "$CTLD_PIDFILE" slurmctld >/dev/null && return 0
  local node
  for node in "${NODES[@]}"; do
    live_pid "$(slurmd_pidfile "$node")" slurmd >/dev/null && return 0
  done
  return 1
}

# A running cluster whose slurm.conf is not the one render_config writes would
# keep its old node declarations: 'scontrol reconfigure' answers that node
# changes "require restart of the slurmctld daemon", so stop the daemons and
# let main start them on the new file. Not while a job runs: slurmctld aborts
# (requeues) jobs on a node whose CPU layout changed; say so instead of
# ignoring the new declaration silently.
restart_if_config_changed() {
  config_current && return 0
  any_running || return 0
  local jobs=""
  ctld_responds && jobs="$(squeue -h -t R,CG -o '%A' 2>/dev/null | paste -sd ' ')"
  [[ -z "$jobs" ]] \
    || die "$CONF_FILE is out of date, and restarting the cluster would abort its running jobs ($jobs); run slurm/cluster/down.sh once they end, then up.sh"
  log "slurm.conf changed; restarting slurmctld and the slurmds"
  stop_slurm_daemons
}

all_running() {
  live_pid "$CTLD_PIDFILE" slurmctld >/dev/null || return 1
  local node
  for node in "${NODES[@]}"; do
    live_pid "$(slurmd_pidfile "$node")" slurmd >/dev/null || return 1
  done
}

main() {
  # Fast path (works without root): everything is up with this config.
  if all_running 2>/dev/null && config_current && munge_works && ctld_responds; then
    wait_for_nodes
    print_exports
    return 0
  fi

  is_root || die "the cluster is not running (or its slurm.conf is out of date) and starting it needs root"
  install_packages
  make_dirs
  # Serialise concurrent up.sh runs (e.g. parallel test workers).
  exec 9>"$LOCK_FILE"
  flock 9

  start_munged
  restart_if_config_changed
  write_config
  start_slurmctld
  wait_for_controller
  local node
  for node in "${NODES[@]}"; do
    start_slurmd "$node"
  done
  wait_for_nodes
  print_exports
}

main "$@"
