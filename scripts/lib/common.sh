#!/usr/bin/env bash
# Shared helpers for the scripts that run next to supervisord (sourced, not executed).
# shellcheck shell=bash

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly PROJECT_ROOT

log() { printf '[%s] %s\n' "${LOG_PREFIX:-llm-batch}" "$*" >&2; }
die() { printf '[%s] error: %s\n' "${LOG_PREFIX:-llm-batch}" "$*" >&2; exit 1; }

# Prints the value of KEY in a dotenv file without evaluating it (for bootstrap values
# needed before Python is known, such as INSTANCE_VENV).
dotenv_value() {
  local file="$1" key="$2" line value
  [[ -f "$file" ]] || return 0
  line="$(grep -E "^[[:space:]]*(export[[:space:]]+)?${key}=" "$file" | tail -n 1)" || return 0
  value="${line#*=}"
  value="${value%$'\r'}"
  if [[ "$value" =~ ^\"(.*)\"$ || "$value" =~ ^\'(.*)\'$ ]]; then
    value="${BASH_REMATCH[1]}"
  fi
  printf '%s' "$value"
}

# Finds the runtime virtualenv and exports every setting (validated by kernel.config),
# with the mode's defaults applied and paths made absolute. Arguments go to
# `kernel.config --shell`: `--check-api` (start-up), `--lenient` (stop and inspect: a bad
# value is a warning and its default is used). SETTINGS_EXPORTS keeps the export lines.
load_settings() {
  local env_file="${ENV_FILE:-${PROJECT_ROOT}/.env}"
  INSTANCE_VENV="${INSTANCE_VENV:-$(dotenv_value "$env_file" INSTANCE_VENV)}"
  local mode="${DEPLOY_MODE:-$(dotenv_value "$env_file" DEPLOY_MODE)}"
  # Off the image (no /opt/venv) with no INSTANCE_VENV given, or the image's default given (as
  # in .env.example, which describes the instance), or in local mode, the project's own
  # virtualenv runs the stack, as `make` sets it: scripts work from a plain shell too.
  if [[ ! -x "${INSTANCE_VENV:-/opt/venv}/bin/python" && -x "${PROJECT_ROOT}/.venv/bin/python" ]] \
    && [[ -z "$INSTANCE_VENV" || "$INSTANCE_VENV" == /opt/venv || "$mode" == local ]]; then
    INSTANCE_VENV="${PROJECT_ROOT}/.venv"
  fi
  INSTANCE_VENV="${INSTANCE_VENV:-/opt/venv}"
  export INSTANCE_VENV
  PYTHON="${INSTANCE_VENV}/bin/python"
  [[ -x "$PYTHON" ]] || die "INSTANCE_VENV: no python at ${PYTHON}; run 'make setup' (or set INSTANCE_VENV)"
  local exports
  # Settings may hold secrets: never trace them.
  { local xtrace_was_on=0; [[ $- == *x* ]] && xtrace_was_on=1; set +x; } 2>/dev/null
  exports="$(cd "$PROJECT_ROOT" && ENV_FILE="$env_file" INSTANCE_VENV="$INSTANCE_VENV" \
    "$PYTHON" -m kernel.config --shell "$@")" \
    || exit 2
  eval "$exports"
  # shellcheck disable=SC2034 # read by start_services.sh
  SETTINGS_EXPORTS="$exports"
  ((xtrace_was_on)) && set -x
  export INSTANCE_VENV PYTHON ENV_FILE="$env_file"
  export PATH="${INSTANCE_VENV}/bin:${PATH}"
  export SUPERVISOR_CONF="${PROJECT_ROOT}/supervisord.conf"
}

supervisorctl_cmd() {
  "${INSTANCE_VENV}/bin/supervisorctl" -c "$SUPERVISOR_CONF" "$@"
}

supervisord_running() {
  [[ -S "$SUPERVISOR_SOCKET" ]] && supervisorctl_cmd pid >/dev/null 2>&1
}

# Prints `NAME STATE` for each program supervisord is still starting: STARTING (up for less
# than its startsecs) or BACKOFF (it exited while starting and will be retried).
starting_programs() {
  supervisorctl_cmd status 2>/dev/null \
    | awk '$2 == "STARTING" || $2 == "BACKOFF" {print $1, $2}' || true
}
