#!/usr/bin/env bash
# `make up`: the whole stack on this machine in local mode, then wait until it is healthy:
# /health says ok and supervisord has every started program past start-up (RUNNING once it
# stayed up for its startsecs), so `make status` right after shows RUNNING.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=up

usage() {
  echo "Usage: scripts/up.sh [-h]   (DEPLOY_MODE=local unless set; waits HEALTH_TIMEOUT seconds)"
}

main() {
  case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  export DEPLOY_MODE="${DEPLOY_MODE:-local}"
  local started=$SECONDS
  "${PROJECT_ROOT}/scripts/start_services.sh"
  load_settings
  local timeout="$HEALTH_TIMEOUT" api="http://127.0.0.1:${API_PORT}" status="" starting=""
  until status="$(curl -fsS --max-time 5 "${api}/health" 2>/dev/null)" \
    && "$PYTHON" -c 'import json, sys; sys.exit(json.load(sys.stdin)["status"] != "ok")' \
      <<<"$status" \
    && starting="$(starting_programs)" && [[ -z "$starting" ]]; do
    if ((SECONDS - started > timeout)); then
      log "not healthy after ${timeout}s:"
      printf '%s\n' "${status:-no answer from ${api}/health}" >&2
      [[ -z "$starting" ]] || log "still starting in supervisord: ${starting//$'\n'/, }"
      STATUS_SETTLE_SECONDS=0 "${PROJECT_ROOT}/scripts/supervisorctl.sh" status >&2 || true
      die "see the logs in ${LOG_DIR}"
    fi
    sleep 0.5
  done
  local s3_scheme=http
  [[ "$MINIO_SECURE" == true ]] && s3_scheme=https
  cat <<SUMMARY
Stack healthy in $((SECONDS - started))s (mode ${DEPLOY_MODE}).
  API docs     ${api}/docs
  Dashboard    http://127.0.0.1:${WEB_PORT}/
  S3 endpoint  ${s3_scheme}://${MINIO_ENDPOINT}  (bucket ${MINIO_BUCKET})
  Temporal UI  http://${TEMPORAL_HOST}:${TEMPORAL_UI_PORT}/
  Logs         ${LOG_DIR}/
Stop everything with: make down
SUMMARY
}

main "$@"
