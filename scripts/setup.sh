#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs to run the stack locally and its tests:
# system packages (when root), the virtualenv with requirements.txt, llama-server (built
# once into a cache outside the repository) and the tiny test model. Each step is skipped
# when already done, so running it again takes seconds.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=setup

readonly VENV="${VENV:-${PROJECT_ROOT}/.venv}"
readonly BASE_PYTHON="${BASE_PYTHON:-python3}"
# Build tools for llama-server; ssh/rsync for the deploy tests; chromium for the dashboard test.
readonly SYSTEM_PACKAGES=(cmake ninja-build g++ make rsync openssh-server openssh-client curl chromium iproute2)

usage() {
  cat <<USAGE
Usage: scripts/setup.sh [--no-system] [--dry-run] [-h]

  --no-system  skip the Debian packages (${SYSTEM_PACKAGES[*]})
  --dry-run    print the steps, change nothing

Environment: VENV (default .venv), BASE_PYTHON (default python3, must be 3.11+).
USAGE
}

run() {
  if ((DRY_RUN)); then
    printf '[setup] would run: %s\n' "$*" >&2
  else
    "$@"
  fi
}

install_system_packages() {
  local missing=() package
  for package in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  ((${#missing[@]})) || { log "system packages present"; return 0; }
  if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    log "warning: missing system packages (install them as root): ${missing[*]}"
    return 0
  fi
  log "installing system packages: ${missing[*]}"
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

requirements_stamp() {
  cat "${PROJECT_ROOT}/requirements.txt" "${PROJECT_ROOT}/requirements.instance.txt" \
    | sha256sum | cut -d' ' -f1
}

setup_virtualenv() {
  "$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "${BASE_PYTHON} is older than Python 3.11"
  if [[ ! -x "${VENV}/bin/python" ]]; then
    log "creating virtualenv ${VENV}"
    run "$BASE_PYTHON" -m venv "$VENV"
  fi
  local stamp_file="${VENV}/.requirements.sha256" stamp
  stamp="$(requirements_stamp)"
  if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    log "requirements up to date in ${VENV}"
    return 0
  fi
  log "installing requirements.txt into ${VENV}"
  run "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "${PROJECT_ROOT}/requirements.txt"
  ((DRY_RUN)) || echo "$stamp" >"$stamp_file"
}

# The project itself, editable and without dependencies, for the `llm-batch` console script.
# Skipped when the script is there and points at this checkout with this pyproject.toml.
install_cli() {
  local stamp_file="${VENV}/.llm-batch-cli.sha256" stamp
  stamp="$(printf '%s\n' "${PROJECT_ROOT}" | cat - "${PROJECT_ROOT}/pyproject.toml" | sha256sum \
    | cut -d' ' -f1)"
  if [[ -x "${VENV}/bin/llm-batch" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    log "llm-batch CLI installed"
    return 0
  fi
  log "installing the llm-batch CLI into ${VENV}"
  run "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-deps -e "${PROJECT_ROOT}"
  ((DRY_RUN)) || echo "$stamp" >"$stamp_file"
}

main() {
  local system=1
  DRY_RUN=0
  while (($#)); do
    case "$1" in
      --no-system) system=0 ;;
      --dry-run) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done
  [[ "${DEPLOY_TRACE:-0}" == 1 ]] && set -x
  local started=$SECONDS
  ((system)) && install_system_packages
  setup_virtualenv
  install_cli
  log "llama-server: $(PYTHON="${VENV}/bin/python" run "${PROJECT_ROOT}/scripts/build_llama_server.sh")"
  log "tiny model: $(run "${VENV}/bin/python" "${PROJECT_ROOT}/scripts/make_tiny_model.py")"
  log "done in $((SECONDS - started))s"
}

main "$@"
