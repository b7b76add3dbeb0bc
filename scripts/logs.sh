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

usage() {
  cat <<USAGE
Usage: scripts/logs.sh [-n LINES] [PROGRAM...]

Follows DATA_DIR/logs/PROGRAM.log (default: fastapi worker-cpu worker-gpu), starting with
the last LINES lines (default 50). Programs: $(known_programs | paste -sd' ' -).
Works whatever .env says (a bad value is a warning).
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
  load_settings --lenient
  local files=()
  for program in "${programs[@]}"; do
    files+=("${LOG_DIR}/${program}.log")
    [[ -f "${LOG_DIR}/${program}.log" ]] \
      || log "${program} has not written a log yet (${LOG_DIR}/${program}.log): waiting for it"
  done
  log "following ${files[*]} (Ctrl-C to stop)"
  exec tail -n "$lines" -F "${files[@]}"
}

main "$@"
