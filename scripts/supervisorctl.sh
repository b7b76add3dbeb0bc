#!/usr/bin/env bash
# supervisorctl on this project's supervisord, whatever the mode: `scripts/supervisorctl.sh status`.
#
# With no supervisord running it says so in one line and exits 3 (LSB's "not running") for
# every command, rather than supervisorctl's socket error. `status` with no program names
# (`make status`) first lets programs that are STARTING settle (supervisord calls a program
# RUNNING only once it has stayed up for its startsecs), says why one is still STARTING or
# in BACKOFF, and exits 0: on-demand workers are normally stopped.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=supervisorctl
# Longer than any program's startsecs in supervisord.conf.
SETTLE_SECONDS="${STATUS_SETTLE_SECONDS:-10}"
readonly SETTLE_SECONDS

usage() {
  cat <<USAGE
Usage: scripts/supervisorctl.sh [COMMAND [ARG...]]   (any supervisorctl command; none: its shell)

Runs supervisorctl -c supervisord.conf on this project's supervisord. Exits 3 when it is not
running. 'status' alone waits up to ${SETTLE_SECONDS}s for STARTING programs to settle.
USAGE
}

explain_starting() {
  local name="$1" state="$2"
  case "$state" in
    STARTING)
      log "${name} is STARTING: it has been up for less than its startsecs; RUNNING" \
        "once it stays up that long (scripts/logs.sh ${name} shows its start-up)"
      ;;
    BACKOFF)
      log "${name} is in BACKOFF: it exited while starting and supervisord retries it" \
        "(up to startretries, then FATAL); scripts/logs.sh ${name} says why"
      ;;
  esac
}

status_all() {
  local deadline=$((SECONDS + SETTLE_SECONDS))
  while [[ -n "$(starting_programs)" ]] && ((SECONDS < deadline)); do
    sleep 0.5
  done
  local rc=0
  supervisorctl_cmd status || rc=$?
  # 3 is supervisorctl's "some program is not running": stopped workers are normal.
  ((rc == 0 || rc == 3)) || return "$rc"
  local name state
  while read -r name state; do
    if [[ -n "$name" ]]; then
      explain_starting "$name" "$state"
    fi
  done <<<"$(starting_programs)"
  return 0
}

main() {
  case "${1:-}" in
    -h | --help) usage; exit 0 ;;
  esac
  [[ "${DEPLOY_TRACE:-0}" == 1 ]] && set -x
  load_settings --lenient
  if ! supervisord_running; then
    echo "not running: no supervisord answers on ${SUPERVISOR_SOCKET} (start the stack with: make up)"
    exit 3
  fi
  if [[ "$*" == status ]]; then
    status_all
    exit
  fi
  exec "${INSTANCE_VENV}/bin/supervisorctl" -c "$SUPERVISOR_CONF" "$@"
}

main "$@"
