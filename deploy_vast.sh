#!/usr/bin/env bash
# Deploys this repository to a Vast.ai GPU instance and keeps it running there.
#
#   ./deploy_vast.sh [deploy]   preflight, sync, converge, health gate, summary
#   ./deploy_vast.sh status | logs [PROGRAM] [-f] | tunnel | stop | ssh [CMD...] | offers
#                    | check | fleet ...          (--help lists them all)
#
# A launcher: the deploy is the Python package deploy/ (docs/deploy.md), run as
# `python -m deploy ARGS`. Its Python is DEPLOY_PYTHON if set, else this checkout's
# .venv/bin/python (make setup), else python3; it needs Python 3.11+ and pydantic-settings
# (the deploy reads .env with kernel.config). DEPLOY_TRACE=1 also traces this script.
set -euo pipefail

if [[ "${DEPLOY_TRACE:-0}" == 1 ]]; then set -x; fi

die() {
  printf '[deploy] error: %s\n' "$*" >&2
  exit 1
}

# The first interpreter that exists: DEPLOY_PYTHON, the project's virtualenv, python3.
find_python() {
  local root="$1" candidate
  if [[ -n "${DEPLOY_PYTHON:-}" ]]; then
    command -v "${DEPLOY_PYTHON}" >/dev/null 2>&1 \
      || die "DEPLOY_PYTHON: no python at ${DEPLOY_PYTHON}"
    printf '%s' "${DEPLOY_PYTHON}"
    return
  fi
  for candidate in "${root}/.venv/bin/python" python3; do
    if command -v "${candidate}" >/dev/null 2>&1; then
      printf '%s' "${candidate}"
      return
    fi
  done
  die "no Python found: run make setup (creates .venv), or set DEPLOY_PYTHON"
}

main() {
  local root python
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  python="$(find_python "${root}")"
  # The package imports from the repository root, wherever this is run from.
  export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
  exec "${python}" -m deploy "$@"
}

main "$@"
