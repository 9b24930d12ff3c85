#!/usr/bin/env bash
# Stop the two-node development Slurm cluster started by slurm/cluster/up.sh.
#
# Why: development and CI start a throwaway local Slurm (see up.sh); this
# stops its slurmd daemons (n1, n2) and slurmctld, and munged only when up.sh
# was the one that started it. Saved state, logs and the job completion log
# are kept, so up.sh later resumes where it left off. Idempotent: nothing
# running is not an error.
#
# Usage:   slurm/cluster/down.sh [--purge]
#   --purge   also cancel all jobs and delete the state directory
#             ($HPCSWEEP_SLURM_DIR, default /tmp/hpcsweep-slurm).
set -euo pipefail

SCRIPT_NAME="down.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/cluster/common.sh
source "$HERE/common.sh"

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

cancel_all_jobs() {
  ctld_responds || return 0
  local jobs
  jobs="$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')"
  [[ -n "${jobs// /}" ]] || return 0
  log "cancelling jobs: $jobs"
  # shellcheck disable=SC2086 # word splitting wanted: one id per word
  scancel $jobs 2>/dev/null || true
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -z "$(squeue -h -t R,CG -o '%A' 2>/dev/null)" ]] && return 0
    sleep 0.2
  done
}

stop_munged() {
  [[ -f "$MUNGE_MARKER" ]] || return 0
  stop_daemon "$MUNGE_PIDFILE" munged munged
  rm -f "$MUNGE_MARKER"
}

main() {
  local purge=0 arg
  for arg in "$@"; do
    case "$arg" in
      --purge) purge=1 ;;
      -h | --help) usage; return 0 ;;
      *) usage; die "unknown argument: $arg" ;;
    esac
  done

  if [[ ! -d "$SLURM_DIR" ]]; then
    log "nothing to stop ($SLURM_DIR does not exist)"
    return 0
  fi

  [[ "$purge" -eq 1 ]] && cancel_all_jobs
  stop_slurm_daemons
  stop_munged

  if [[ "$purge" -eq 1 ]]; then
    # Guard against a mistyped HPCSWEEP_SLURM_DIR: only delete our own layout.
    [[ "$SLURM_DIR" != "/" && -f "$CONF_FILE" && -d "$STATE_DIR" ]] \
      || die "refusing to delete $SLURM_DIR: it does not look like an up.sh state dir"
    log "removing $SLURM_DIR"
    rm -rf -- "$SLURM_DIR"
  fi
  log "cluster stopped"
}

main "$@"
