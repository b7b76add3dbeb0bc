#!/usr/bin/env bash
# Stops supervisord and every program it runs, and waits until no process is left.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=stop

usage() {
  echo "Usage: scripts/stop_services.sh [--env-file FILE] [-h]"
}

main() {
  while (($#)); do
    case "$1" in
      --env-file) ENV_FILE="$2"; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done
  [[ "${DEPLOY_TRACE:-0}" == 1 ]] && set -x
  load_settings --lenient
  local pidfile="${DATA_DIR}/supervisord.pid" pid
  if [[ ! -f "$pidfile" ]]; then
    log "not running (no ${pidfile})"
    return 0
  fi
  pid="$(cat "$pidfile")"
  if ! kill -0 "$pid" 2>/dev/null; then
    log "not running (stale pid ${pid})"
    rm -f "$pidfile" "$SUPERVISOR_SOCKET"
    return 0
  fi
  log "stopping supervisord (pid ${pid}) and its programs"
  # SIGTERM makes supervisord stop every program (stopwaitsecs each) before exiting.
  kill -TERM "$pid"
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "supervisord still running after 60s; killing its process group"
      kill -KILL -- "-${pid}" 2>/dev/null || kill -KILL "$pid"
      break
    fi
    sleep 0.2
  done
  rm -f "$SUPERVISOR_SOCKET"
  log "stopped"
}

main "$@"
