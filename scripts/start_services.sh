#!/usr/bin/env bash
# Starts every service of the stack under supervisord, the same way on a laptop, in CI, in
# the container and on the GPU instance.
#
# Reads .env (or --env-file / $ENV_FILE), validates every setting, applies the defaults of
# DEPLOY_MODE (hybrid | standalone | local) and starts supervisord on supervisord.conf.
# When supervisord is already running it applies configuration changes instead
# (`supervisorctl update`), so running it twice is harmless; when the settings differ from
# those it was started with (saved in DATA_DIR/settings.started), it restarts the stack.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=start

usage() {
  cat <<USAGE
Usage: scripts/start_services.sh [--env-file FILE] [--foreground] [--dry-run] [-h]

  --env-file FILE  read settings from FILE instead of .env
  --foreground     exec supervisord in the foreground (container CMD)
  --dry-run        validate settings and print what would start, start nothing

Environment: INSTANCE_VENV (default /opt/venv) holds python and supervisor.
USAGE
}

prepare_local_mode() {
  local model="$LLAMA_MODEL"
  [[ "$model" == /* ]] || model="${PROJECT_ROOT}/${model}"
  if [[ ! -f "$model" && "$model" == */models/tiny-llama.gguf ]]; then
    log "generating the tiny test model at ${model}"
    "$PYTHON" "${PROJECT_ROOT}/scripts/make_tiny_model.py" --output "$model" >/dev/null
  fi
  if [[ "$LLAMA_SERVER_BIN" != */* ]] && ! command -v "$LLAMA_SERVER_BIN" >/dev/null; then
    LLAMA_SERVER_BIN="$("${PROJECT_ROOT}/scripts/build_llama_server.sh" --find)" \
      || die "llama-server is not built yet: run 'make setup' (or set LLAMA_SERVER_BIN)"
    export LLAMA_SERVER_BIN
  fi
}

# The settings the running supervisord was started with (every program inherits them).
started_settings_file() { printf '%s/settings.started' "$DATA_DIR"; }

save_started_settings() {
  (umask 077 && printf '%s\n' "$SETTINGS_EXPORTS" >"$(started_settings_file)")
}

# Prints the names of the settings that differ from those the stack was started with
# (never their values: they may be secrets); "?" when that is not known.
changed_settings() {
  local file
  file="$(started_settings_file)"
  [[ -f "$file" ]] || { echo "?"; return 0; }
  { diff <(sort "$file") <(printf '%s\n' "$SETTINGS_EXPORTS" | sort) || true; } \
    | sed -nE 's/^[<>] export ([A-Za-z0-9_]+)=.*/\1/p' | sort -u | paste -sd' ' -
}

# Dies with one line when a port the programs will bind is taken (say by a stack started
# with another DATA_DIR, whose supervisord this one cannot see): otherwise those programs
# would go FATAL one by one. Names the holder and how to stop it (deploy/instance/ports.py).
check_ports_free() {
  local problem
  problem="$(cd "$PROJECT_ROOT" && "$PYTHON" -m deploy.instance.ports)" \
    || die "${problem:-the port check failed (see above)}"
}

wait_for_supervisord() {
  local deadline=$((SECONDS + 15))
  until supervisord_running; do
    ((SECONDS < deadline)) || die "supervisord did not come up; see ${LOG_DIR}/supervisord.log"
    sleep 0.2
  done
}

main() {
  local foreground=0 dry_run=0
  while (($#)); do
    case "$1" in
      --env-file)
        [[ $# -ge 2 ]] || die "--env-file needs a file"
        [[ -f "$2" ]] || die "--env-file: $2 does not exist"
        ENV_FILE="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
        shift
        ;;
      --foreground) foreground=1 ;;
      --dry-run) dry_run=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done
  [[ "${DEPLOY_TRACE:-0}" == 1 ]] && set -x

  load_settings --check-api
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  chmod 700 "$DATA_DIR"
  [[ "$DEPLOY_MODE" == local ]] && prepare_local_mode

  local enabled=()
  local var
  for var in TEMPORAL MINIO LLAMA WEB; do
    local flag="AUTOSTART_${var}"
    [[ "${!flag}" == true ]] && enabled+=("${var,,}")
  done
  log "mode ${DEPLOY_MODE}: fastapi${enabled[*]:+ ${enabled[*]}} (workers start on demand); data in ${DATA_DIR}"

  if ((dry_run)); then
    if supervisord_running; then
      log "dry run: supervisord already running (pid $(cat "${DATA_DIR}/supervisord.pid")); its ports are in use by it"
      return 0
    fi
    check_ports_free
    log "dry run: ports free; would start ${INSTANCE_VENV}/bin/supervisord -c ${SUPERVISOR_CONF}"
    return 0
  fi
  if supervisord_running; then
    local changed
    changed="$(changed_settings)"
    if [[ -z "$changed" ]]; then
      log "supervisord already running; applying configuration changes"
      supervisorctl_cmd update >&2
      return 0
    fi
    if [[ "$changed" == "?" ]]; then
      log "supervisord already running, started without a record of its settings:" \
        "a changed .env is not applied; to apply it: scripts/stop_services.sh && scripts/start_services.sh"
      supervisorctl_cmd update >&2
      return 0
    fi
    # Programs inherit supervisord's environment, so a changed setting needs a new
    # supervisord (the deploy does the same); data under DATA_DIR is kept.
    log "settings changed since the stack started (${changed}): restarting every program"
    "${PROJECT_ROOT}/scripts/stop_services.sh" >&2
  fi
  check_ports_free
  rm -f "$SUPERVISOR_SOCKET"
  save_started_settings
  if ((foreground)); then
    exec "${INSTANCE_VENV}/bin/supervisord" -n -c "$SUPERVISOR_CONF"
  fi
  "${INSTANCE_VENV}/bin/supervisord" -c "$SUPERVISOR_CONF"
  wait_for_supervisord
  log "supervisord running (pid $(cat "${DATA_DIR}/supervisord.pid")); logs in ${LOG_DIR}"
}

main "$@"
