#!/usr/bin/env bash
# Deletes the local stack's data folder, DATA_DIR (S3 objects, Temporal history, logs), once
# the stack is stopped (`make clean` runs `make down` first). A folder that does not look
# like the stack's is refused, so a mistyped DATA_DIR never deletes anything else.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=clean

usage() {
  echo "Usage: scripts/clean.sh [--env-file FILE] [--dry-run] [-h]"
}

main() {
  local dry_run=0
  while (($#)); do
    case "$1" in
      --env-file) ENV_FILE="$2"; shift ;;
      --dry-run) dry_run=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done
  load_settings --lenient
  # shellcheck disable=SC2153 # exported by load_settings
  local data_dir="${DATA_DIR%/}"
  if [[ ! -d "$data_dir" ]]; then
    log "nothing to delete (no ${data_dir})"
    return 0
  fi
  case "$data_dir" in
    "" | / | "$HOME" | "$PROJECT_ROOT") die "refusing to delete DATA_DIR=${data_dir}" ;;
  esac
  if [[ -f "${data_dir}/supervisord.pid" ]] && kill -0 "$(cat "${data_dir}/supervisord.pid")" 2>/dev/null; then
    die "the stack is still running; run make down first"
  fi
  # What the launcher puts there: logs/ and at least one server's folder or file.
  if [[ ! -d "${data_dir}/logs" ]]; then
    die "${data_dir} has no logs/ folder: it does not look like the stack's DATA_DIR; delete it by hand"
  fi
  if ((dry_run)); then
    log "would delete ${data_dir}"
    return 0
  fi
  rm -rf -- "$data_dir"
  log "deleted ${data_dir}"
}

main "$@"
