#!/usr/bin/env bash
# Follows program logs under DATA_DIR/logs (`make logs`: the API and the workers).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=logs

# The programs of supervisord.conf, and supervisord itself: the logs there can be.
known_programs() {
  sed -n 's/^\[program:\([a-z-]*\)\]$/\1/p' "${PROJECT_ROOT}/supervisord.conf"
  echo supervisord
}

# DATA_DIR/logs, from DATA_DIR alone (the environment, else the settings file, else the
# default `data` under the checkout), read without starting Python: loading every setting
# takes seconds on a busy box, and following files needs none of them.
log_dir() {
  local data_dir="${DATA_DIR:-}"
  [[ -n "$data_dir" ]] || data_dir="$(dotenv_value "${ENV_FILE:-${PROJECT_ROOT}/.env}" DATA_DIR)"
  data_dir="${data_dir:-data}"
  [[ "$data_dir" == /* ]] || data_dir="${PROJECT_ROOT}/${data_dir}"
  printf '%s/logs' "$data_dir"
}

usage() {
  cat <<USAGE
Usage: scripts/logs.sh [-n LINES] [PROGRAM...]

Follows DATA_DIR/logs/PROGRAM.log (default: fastapi worker-cpu worker-gpu), starting with
the last LINES lines (default 50). Programs: $(known_programs | paste -sd' ' -).
Works whatever .env says: only DATA_DIR is read.
USAGE
}

main() {
  local lines=50 programs=()
  while (($#)); do
    case "$1" in
      -n)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "-n needs a number of lines"
        lines="$2"
        shift
        ;;
      -h | --help) usage; exit 0 ;;
      -*) usage >&2; die "unknown flag: $1" ;;
      *) programs+=("$1") ;;
    esac
    shift
  done
  ((${#programs[@]})) || programs=(fastapi worker-cpu worker-gpu)
  [[ "${DEPLOY_TRACE:-0}" == 1 ]] && set -x
  local known program
  known="$(known_programs | paste -sd' ' -)"
  for program in "${programs[@]}"; do
    [[ " ${known} " == *" ${program} "* ]] \
      || die "unknown program: ${program} (programs: ${known})"
  done
  local files=() LOG_DIR
  LOG_DIR="$(log_dir)"
  for program in "${programs[@]}"; do
    files+=("${LOG_DIR}/${program}.log")
    [[ -f "${LOG_DIR}/${program}.log" ]] \
      || log "${program} has not written a log yet (${LOG_DIR}/${program}.log): waiting for it"
  done
  log "following ${files[*]} (Ctrl-C to stop)"
  exec tail -n "$lines" -F "${files[@]}"
}

main "$@"
