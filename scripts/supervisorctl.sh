#!/usr/bin/env bash
# supervisorctl on this project's supervisord, whatever the mode: `scripts/supervisorctl.sh status`.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
LOG_PREFIX=supervisorctl
[[ "${DEPLOY_TRACE:-0}" == 1 ]] && set -x
load_settings --lenient
exec "${INSTANCE_VENV}/bin/supervisorctl" -c "$SUPERVISOR_CONF" "$@"
