#!/usr/bin/env bash
# Offline lint of the whole repository; every tool comes from the project's virtualenv:
#   docker     hadolint on Dockerfile and Dockerfile.base (.hadolint.yaml)
#   shell      shellcheck on every shell script (git's *.sh, deploy_vast.sh, .ci/run)
#   workflows  check-jsonschema on .github (GitHub's workflow schema, bundled with the tool),
#              and every `uses:` pinned to a full commit SHA
#   ruff       ruff check .
#   mypy       mypy app bench cli deploy kernel workers scripts/container_smoke.py
#   imports    lint-imports: app/ and workers/ import the kernel, never each other
# Runs every step even after a failure, so one run shows every finding; exits 1 if any failed.
set -euo pipefail

readonly ALL_STEPS=(docker shell workflows ruff mypy imports)

usage() {
  cat <<USAGE
Usage: scripts/lint.sh [STEP...]

Steps (default: all): ${ALL_STEPS[*]}

Environment:
  VENV          virtualenv with hadolint, shellcheck, check-jsonschema, ruff, mypy,
                import-linter [.venv]
  LINT_TRACE=1  trace every command (set -x)
USAGE
}

log() { printf '[lint] %s\n' "$*" >&2; }
die() { printf '[lint] error: %s\n' "$*" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
VENV="${VENV:-${ROOT}/.venv}"
[[ "${VENV}" == /* ]] || VENV="${ROOT}/${VENV}"
readonly VENV BIN="${VENV}/bin"

# Prints the path of a linter from the virtualenv, or explains how to get it and fails.
tool() {
  local name="$1"
  if [[ ! -x "${BIN}/${name}" ]]; then
    log "${name} not found in ${BIN}: install requirements.txt into ${VENV} (or set VENV)"
    return 1
  fi
  printf '%s\n' "${BIN}/${name}"
}

# Tracked files plus new ones git does not ignore, so a script is linted before its commit.
repo_files() {
  git -C "${ROOT}" ls-files --cached --others --exclude-standard -- "$@" | sort -u
}

lint_docker() {
  local files=() file
  for file in Dockerfile.base Dockerfile; do
    [[ -f "${file}" ]] && files+=("${file}")
  done
  ((${#files[@]})) || { log "docker: no Dockerfile"; return 0; }
  local hadolint
  hadolint="$(tool hadolint)" || return 1
  "${hadolint}" --config .hadolint.yaml "${files[@]}"
}

lint_shell() {
  local files=() file
  mapfile -t files < <(repo_files '*.sh')
  for file in deploy_vast.sh .ci/run; do
    [[ -f "${file}" ]] && files+=("${file}")
  done
  ((${#files[@]})) || { log "shell: no shell script"; return 0; }
  local shellcheck
  shellcheck="$(tool shellcheck)" || return 1
  "${shellcheck}" --external-sources --source-path=SCRIPTDIR "${files[@]}"
}

lint_workflows() {
  local workflows=()
  mapfile -t workflows < <(repo_files '.github/workflows/*.yml' '.github/workflows/*.yaml')
  ((${#workflows[@]})) || { log "workflows: none"; return 0; }
  local check_jsonschema status=0
  check_jsonschema="$(tool check-jsonschema)" || return 1
  # The schemas ship inside check-jsonschema: no network access is needed.
  "${check_jsonschema}" --builtin-schema vendor.github-workflows "${workflows[@]}" || status=1
  if [[ -f .github/dependabot.yml ]]; then
    "${check_jsonschema}" --builtin-schema vendor.dependabot .github/dependabot.yml || status=1
  fi
  # Third-party actions run with the job's token: pin each to a full commit SHA (a tag can move).
  local unpinned
  unpinned="$(grep -nE '^[[:space:]-]*uses:' "${workflows[@]}" \
    | grep -vE 'uses:[[:space:]]*("|'\'')?(\./|docker://)' \
    | grep -vE 'uses:[[:space:]]*[^@[:space:]]+@[0-9a-f]{40}([[:space:]]|$)' || true)"
  if [[ -n "${unpinned}" ]]; then
    printf '%s\n' "${unpinned}" >&2
    log "workflows: pin these actions to a full commit SHA (with the version in a comment)"
    status=1
  fi
  return "${status}"
}

lint_ruff() {
  local ruff
  ruff="$(tool ruff)" || return 1
  "${ruff}" check .
}

lint_mypy() {
  local dirs=() dir
  for dir in app bench cli deploy kernel workers scripts/container_smoke.py; do
    [[ -e "${dir}" ]] && dirs+=("${dir}")
  done
  ((${#dirs[@]})) || { log "mypy: no app/, deploy/, kernel/ or workers/"; return 0; }
  local mypy
  mypy="$(tool mypy)" || return 1
  "${mypy}" "${dirs[@]}"
}

lint_imports() {
  local lint_imports
  lint_imports="$(tool lint-imports)" || return 1
  "${lint_imports}" --config pyproject.toml
}

main() {
  local steps=() step
  for step in "$@"; do
    case "${step}" in
      -h | --help) usage; exit 0 ;;
      docker | shell | workflows | ruff | mypy | imports) steps+=("${step}") ;;
      *) usage >&2; die "unknown step: ${step}" ;;
    esac
  done
  ((${#steps[@]})) || steps=("${ALL_STEPS[@]}")
  [[ "${LINT_TRACE:-0}" == 1 ]] && set -x
  cd "${ROOT}"

  local failed=()
  for step in "${steps[@]}"; do
    log "${step}"
    if ! "lint_${step}"; then
      failed+=("${step}")
    fi
  done
  if ((${#failed[@]})); then
    log "FAILED: ${failed[*]}"
    exit 1
  fi
  log "all clean: ${steps[*]}"
}

main "$@"
