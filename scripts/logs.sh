#!/usr/bin/env bash
# Follows program logs under DATA_DIR/logs (`make logs`: the API and the workers).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=logs

usage() {
  cat <<USAGE
Usage: scripts/logs.sh [-n LINES] [PROGRAM...]

Follows DATA_DIR/logs/PROGRAM.log (default: fastapi worker-cpu worker-gpu), starting with
the last LINES lines (default 50). Programs: fastapi worker-cpu worker-gpu llama web
temporal minio supervisord. Works whatever .env says (a bad value is a warning).
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
  load_settings --lenient
  local files=() program
  for program in "${programs[@]}"; do
    [[ "$program" =~ ^[a-z-]+$ ]] || die "not a program name: ${program}"
    files+=("${LOG_DIR}/${program}.log")
  done
  log "following ${files[*]} (Ctrl-C to stop)"
  exec tail -n "$lines" -F "${files[@]}"
}

main "$@"
