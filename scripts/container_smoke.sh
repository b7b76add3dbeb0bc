#!/usr/bin/env bash
# Smoke test of a running deployment, over HTTP only: /health reports "ok", /queues answers for
# the cpu and gpu task queues, and one small batch runs to a terminal status with every
# custom_id in its results exactly once.
#
# Used by CI against the freshly built app container (.github/workflows/ci-minimal-image.yml),
# and by hand against any deployment: the local stack, a Vast instance through a tunnel, ...
#
#   scripts/container_smoke.sh BASE_URL [API_KEY]      (--help for the settings)
#
# The checks are scripts/container_smoke.py (Python 3 standard library only), run by
# $PYTHON (default python3). On any failure it prints one line "container_smoke: FAIL:
# <reason>" to stderr and exits 1; a usage error exits 2.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
if ! command -v "${PYTHON}" >/dev/null 2>&1; then
  printf 'container_smoke: FAIL: %s is required (set PYTHON to a Python 3 interpreter)\n' \
    "${PYTHON}" >&2
  exit 1
fi
exec "${PYTHON}" "$(dirname "${BASH_SOURCE[0]}")/container_smoke.py" "$@"
