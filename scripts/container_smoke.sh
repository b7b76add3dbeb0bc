#!/usr/bin/env bash
# Smoke test of a running deployment, over HTTP only: /health reports "ok", /queues answers for
# the cpu and gpu task queues, and one small batch runs to a terminal status with every
# custom_id in its results exactly once.
#
# Used by CI against the freshly built app container (.github/workflows/ci-minimal-image.yml),
# and by hand against any deployment: the local stack, a Vast instance through a tunnel, ...
#
# On any failure it prints one line "container_smoke: FAIL: <reason>" to stderr and exits 1.
# The whole run is bounded by SMOKE_TIMEOUT seconds. Needs only curl and python3 (for JSON).
set -euo pipefail

readonly PROG="container_smoke"

readonly SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-180}"
readonly SMOKE_HEALTH_WAIT="${SMOKE_HEALTH_WAIT:-60}"
readonly SMOKE_POLL_INTERVAL="${SMOKE_POLL_INTERVAL:-2}"
readonly SMOKE_REQUEST_TIMEOUT="${SMOKE_REQUEST_TIMEOUT:-15}"
readonly SMOKE_ITEMS="${SMOKE_ITEMS:-3}"
readonly SMOKE_MAX_TOKENS="${SMOKE_MAX_TOKENS:-8}"
readonly PYTHON="${PYTHON:-python3}"

# The API contract this script checks (DESIGN.md, "API contract"). Adapt here if it moves.
readonly HEALTH_PATH="/health"
readonly QUEUES_PATH="/queues"
readonly BATCH_PATH="/batch"              # POST to create, GET ${BATCH_PATH}/{id}
readonly RESULTS_SUFFIX="/results"        # GET ${BATCH_PATH}/{id}${RESULTS_SUFFIX} (JSONL)
readonly EXPECTED_QUEUES=(cpu gpu)
readonly TERMINAL_STATUSES="completed failed cancelled expired"

BASE_URL=""
API_KEY=""
WORK=""
HTTP_STATUS=""
HTTP_ERROR=""
PHASE="start"
DEADLINE=0

usage() {
  cat <<USAGE
Usage: scripts/container_smoke.sh BASE_URL [API_KEY]

Smoke-tests a running deployment: GET /health (status "ok"), GET /queues (cpu and gpu),
POST /batch with ${SMOKE_ITEMS} items (max_tokens ${SMOKE_MAX_TOKENS}), polls GET /batch/{id}
until it ends, then checks GET /batch/{id}/results has every custom_id exactly once.

  BASE_URL   e.g. http://127.0.0.1:8000
  API_KEY    bearer token; defaults to \$API_KEY from the environment (none: no auth header)

Environment (defaults in brackets):
  SMOKE_TIMEOUT          total time budget in seconds [180]
  SMOKE_HEALTH_WAIT      how long /health may stay "degraded" while services start [60]
  SMOKE_POLL_INTERVAL    seconds between polls [2]
  SMOKE_REQUEST_TIMEOUT  per-request limit in seconds [15]
  SMOKE_ITEMS            requests in the batch [3]
  SMOKE_MAX_TOKENS       max_tokens for each request [8]
  SMOKE_TRACE=1          trace every command (set -x)

Exit status: 0 when every check passed, 1 on a failed check (one-line reason on stderr),
2 on a usage error.
USAGE
}

log() { printf '%s: %s\n' "${PROG}" "$*" >&2; }

die() {
  local reason="$*"
  reason="${reason//$'\n'/ }"
  printf '%s: FAIL: %s\n' "${PROG}" "${reason}" >&2
  exit 1
}

usage_error() {
  printf '%s: %s\n' "${PROG}" "$*" >&2
  usage >&2
  exit 2
}

cleanup() {
  if [[ -n "${WORK}" ]]; then
    rm -rf -- "${WORK}"
  fi
}

remaining() { echo $((DEADLINE - SECONDS)); }

# Runs a Python snippet (read from stdin) with the given arguments. The snippets print a
# result on stdout and exit 0, or print a one-line reason and exit 1.
py() { "${PYTHON}" - "$@"; }

# http METHOD PATH [BODY_FILE]: the response body lands in ${WORK}/body and its status in
# HTTP_STATUS. Returns 1 with HTTP_ERROR set when no HTTP answer came back at all.
http() {
  local method="$1" path="$2" body_file="${3:-}"
  local left
  left="$(remaining)"
  ((left > 0)) || die "timed out after ${SMOKE_TIMEOUT}s (${PHASE})"
  local max_time=$((left < SMOKE_REQUEST_TIMEOUT ? left : SMOKE_REQUEST_TIMEOUT))
  local args=(
    --silent --show-error --output "${WORK}/body" --write-out '%{http_code}'
    --max-time "${max_time}" --request "${method}" --header 'Accept: application/json'
  )
  if [[ -n "${API_KEY}" ]]; then
    # From a file, so the key never shows in the process list.
    args+=(--header "@${WORK}/auth-header")
  fi
  if [[ -n "${body_file}" ]]; then
    args+=(--header 'Content-Type: application/json' --data-binary "@${body_file}")
  fi
  : >"${WORK}/body"
  HTTP_ERROR=""
  if ! HTTP_STATUS="$(curl "${args[@]}" "${BASE_URL}${path}" 2>"${WORK}/curl.err")"; then
    HTTP_STATUS="000"
    HTTP_ERROR="$(tail -n 1 "${WORK}/curl.err")"
    return 1
  fi
}

# Dies unless the last response is one of the given HTTP statuses.
expect_status() {
  local what="$1"
  shift
  local code
  for code in "$@"; do
    [[ "${HTTP_STATUS}" == "${code}" ]] && return 0
  done
  local detail
  detail="$(error_detail)"
  case "${HTTP_STATUS}" in
    401 | 403) die "${what}: HTTP ${HTTP_STATUS} (wrong or missing API key?): ${detail}" ;;
    *) die "${what}: HTTP ${HTTP_STATUS}, expected $*: ${detail}" ;;
  esac
}

# The message of an error answer ({"error": {"message": ...}}) or the start of the body.
error_detail() {
  py "${WORK}/body" <<'PY'
import json, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
try:
    data = json.loads(text)
except ValueError:
    print(" ".join(text.split())[:200] or "(empty body)")
    sys.exit(0)
error = data.get("error") if isinstance(data, dict) else None
if isinstance(error, dict) and error.get("message"):
    print(f"{error.get('type', 'error')}: {error['message']}"[:300])
elif isinstance(data, dict) and "detail" in data:
    print(json.dumps(data["detail"])[:300])
else:
    print(json.dumps(data)[:200])
PY
}

request_or_die() {
  local what="$1"
  shift
  http "$@" || die "${what}: no answer from ${BASE_URL}: ${HTTP_ERROR}"
}

check_health() {
  PHASE="waiting for ${HEALTH_PATH} to report ok"
  local started="${SECONDS}"
  local health_deadline=$((SECONDS + SMOKE_HEALTH_WAIT))
  local reason=""
  while :; do
    if http GET "${HEALTH_PATH}"; then
      if [[ "${HTTP_STATUS}" == 200 ]]; then
        if reason="$(py "${WORK}/body" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1], encoding="utf-8"))
except ValueError as exc:
    print(f"body is not JSON ({exc})")
    sys.exit(1)
if not isinstance(data, dict):
    print("body is not a JSON object")
    sys.exit(1)
status = data.get("status")
if status == "ok":
    print("ok")
    sys.exit(0)

# Name every dependency that is not ok, wherever the API nests them.
problems = []
def walk(node, path):
    if isinstance(node, dict):
        state = node.get("status")
        if path and isinstance(state, str) and state != "ok":
            message = node.get("message") or node.get("error") or ""
            problems.append(f"{path}={state}" + (f" ({message})" if message else ""))
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            walk(value, f"{path}[{index}]")
walk(data, "")
detail = "; ".join(problems) if problems else json.dumps(data)[:200]
print(f"status {status!r}: {detail}"[:400])
sys.exit(1)
PY
        )"; then
          log "health ok"
          return 0
        fi
      else
        reason="HTTP ${HTTP_STATUS}: $(error_detail)"
        case "${HTTP_STATUS}" in
          401 | 403 | 404) die "GET ${HEALTH_PATH}: ${reason}" ;;
        esac
      fi
    else
      reason="no answer: ${HTTP_ERROR}"
    fi
    if ((SECONDS >= health_deadline || $(remaining) <= SMOKE_POLL_INTERVAL)); then
      die "GET ${HEALTH_PATH} not ok after $((SECONDS - started))s: ${reason}"
    fi
    sleep "${SMOKE_POLL_INTERVAL}"
  done
}

check_queues() {
  PHASE="GET ${QUEUES_PATH}"
  request_or_die "GET ${QUEUES_PATH}" GET "${QUEUES_PATH}"
  expect_status "GET ${QUEUES_PATH}" 200
  local summary
  summary="$(py "${WORK}/body" "${EXPECTED_QUEUES[@]}" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1], encoding="utf-8"))
except ValueError as exc:
    print(f"body is not JSON ({exc})")
    sys.exit(1)
queues = data.get("queues") if isinstance(data, dict) else None
if not isinstance(queues, dict):
    print("no 'queues' object in the answer")
    sys.exit(1)
missing = [name for name in sys.argv[2:] if name not in queues]
if missing:
    print(f"queue(s) {', '.join(missing)} missing; got {sorted(queues)}")
    sys.exit(1)
def brief(queue):
    if not isinstance(queue, dict):
        return json.dumps(queue)[:80]
    parts = [f"{key} {value}" for key, value in queue.items() if isinstance(value, (int, float, str))]
    worker = queue.get("worker")
    if isinstance(worker, dict) and worker.get("state"):
        parts.append(f"{worker.get('program', 'worker')} {worker['state']}")
    return ", ".join(parts)[:160]
print("; ".join(f"{name}: {brief(queues[name])}" for name in sys.argv[2:]))
PY
  )" || die "GET ${QUEUES_PATH}: ${summary}"
  log "queues ${summary}"
}

# Prints the new batch's id.
create_batch() {
  PHASE="POST ${BATCH_PATH}"
  local prefix="$1"
  py "${WORK}/request.json" "${prefix}" "${SMOKE_ITEMS}" "${SMOKE_MAX_TOKENS}" <<'PY'
import json, sys
path, prefix, items, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = {
    "items": [
        {
            "custom_id": f"{prefix}-{index}",
            "messages": [{"role": "user", "content": f"Say hello, number {index}."}],
        }
        for index in range(1, items + 1)
    ],
    "defaults": {"max_tokens": max_tokens},
    "metadata": {"source": "container_smoke"},
}
with open(path, "w", encoding="utf-8") as handle:
    json.dump(body, handle)
PY
  request_or_die "POST ${BATCH_PATH}" POST "${BATCH_PATH}" "${WORK}/request.json"
  expect_status "POST ${BATCH_PATH}" 202 201 200
  local batch_id
  batch_id="$(py "${WORK}/body" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1], encoding="utf-8"))
except ValueError as exc:
    print(f"body is not JSON ({exc})")
    sys.exit(1)
batch_id = data.get("id") if isinstance(data, dict) else None
if not isinstance(batch_id, str) or not batch_id:
    print(f"no batch id in the answer: {json.dumps(data)[:200]}")
    sys.exit(1)
print(batch_id)
PY
  )" || die "POST ${BATCH_PATH}: ${batch_id}"
  echo "${batch_id}"
}

# Polls until the batch reaches a terminal status; dies unless it completed with every request.
wait_for_batch() {
  local batch_id="$1"
  PHASE="waiting for batch ${batch_id}"
  local last="" line status
  while :; do
    request_or_die "GET ${BATCH_PATH}/${batch_id}" GET "${BATCH_PATH}/${batch_id}"
    expect_status "GET ${BATCH_PATH}/${batch_id}" 200
    line="$(py "${WORK}/body" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1], encoding="utf-8"))
except ValueError as exc:
    print(f"body is not JSON ({exc})")
    sys.exit(1)
if not isinstance(data, dict) or not isinstance(data.get("status"), str):
    print(f"no status in the answer: {json.dumps(data)[:200]}")
    sys.exit(1)
counts = data.get("request_counts") or {}
print(data["status"], counts.get("total", "?"), counts.get("completed", "?"), counts.get("failed", "?"))
PY
    )" || die "GET ${BATCH_PATH}/${batch_id}: ${line}"
    if [[ "${line}" != "${last}" ]]; then
      log "batch ${batch_id}: status ${line%% *} (total/completed/failed: ${line#* })"
      last="${line}"
    fi
    status="${line%% *}"
    if [[ " ${TERMINAL_STATUSES} " == *" ${status} "* ]]; then
      break
    fi
    if (($(remaining) <= SMOKE_POLL_INTERVAL)); then
      die "batch ${batch_id} still '${status}' after ${SMOKE_TIMEOUT}s (total/completed/failed: ${line#* })"
    fi
    sleep "${SMOKE_POLL_INTERVAL}"
  done
  local total completed failed
  read -r status total completed failed <<<"${line}"
  if [[ "${status}" != completed ]]; then
    die "batch ${batch_id} ended '${status}' (total ${total}, completed ${completed}, failed ${failed}): $(error_detail)"
  fi
  if [[ "${total}" != "${SMOKE_ITEMS}" || "${completed}" != "${SMOKE_ITEMS}" || "${failed}" != 0 ]]; then
    die "batch ${batch_id} completed with request_counts total ${total}, completed ${completed}, failed ${failed}; expected ${SMOKE_ITEMS}/${SMOKE_ITEMS}/0"
  fi
}

check_results() {
  local batch_id="$1" prefix="$2"
  local path="${BATCH_PATH}/${batch_id}${RESULTS_SUFFIX}"
  PHASE="GET ${path}"
  request_or_die "GET ${path}" GET "${path}"
  expect_status "GET ${path}" 200
  local verdict
  verdict="$(py "${WORK}/body" "${prefix}" "${SMOKE_ITEMS}" <<'PY'
import json, sys
from collections import Counter
path, prefix, items = sys.argv[1], sys.argv[2], int(sys.argv[3])
expected = {f"{prefix}-{index}" for index in range(1, items + 1)}
seen = Counter()
bad = []
with open(path, encoding="utf-8") as handle:
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            print(f"results line {number} is not JSON: {raw.strip()[:120]}")
            sys.exit(1)
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(custom_id, str):
            print(f"results line {number} has no custom_id: {raw.strip()[:120]}")
            sys.exit(1)
        seen[custom_id] += 1
        response = line.get("response") or {}
        if line.get("error") or response.get("status_code") != 200:
            detail = line.get("error") or f"status_code {response.get('status_code')!r}"
            bad.append(f"{custom_id}: {json.dumps(detail)[:120]}")
problems = []
missing = sorted(expected - set(seen))
if missing:
    problems.append(f"missing {', '.join(missing)}")
duplicated = sorted(cid for cid, count in seen.items() if count > 1)
if duplicated:
    problems.append(f"duplicated {', '.join(f'{cid} x{seen[cid]}' for cid in duplicated)}")
unexpected = sorted(set(seen) - expected)
if unexpected:
    problems.append(f"unexpected {', '.join(unexpected[:5])}")
if bad:
    problems.append(f"failed requests {'; '.join(bad[:3])}")
if problems:
    print("; ".join(problems))
    sys.exit(1)
print(f"{len(expected)} custom_ids, each exactly once")
PY
  )" || die "GET ${path}: ${verdict}"
  log "results: ${verdict}"
}

is_positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

main() {
  case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") usage_error "missing BASE_URL" ;;
  esac
  (($# <= 2)) || usage_error "too many arguments"
  BASE_URL="${1%/}"
  API_KEY="${2:-${API_KEY:-}}"
  [[ "${BASE_URL}" =~ ^https?://[^/]+ ]] || usage_error "BASE_URL must start with http:// or https://: ${BASE_URL}"
  local name
  for name in SMOKE_TIMEOUT SMOKE_HEALTH_WAIT SMOKE_POLL_INTERVAL SMOKE_REQUEST_TIMEOUT SMOKE_ITEMS SMOKE_MAX_TOKENS; do
    is_positive_int "${!name}" || usage_error "${name} must be a positive integer, got '${!name}'"
  done
  command -v curl >/dev/null || die "curl is required"
  command -v "${PYTHON}" >/dev/null || die "${PYTHON} is required"
  if [[ "${SMOKE_TRACE:-0}" == 1 ]]; then
    set -x
  fi

  DEADLINE=$((SECONDS + SMOKE_TIMEOUT))
  WORK="$(mktemp -d)"
  trap cleanup EXIT
  if [[ -n "${API_KEY}" ]]; then
    (umask 077 && printf 'Authorization: Bearer %s\n' "${API_KEY}" >"${WORK}/auth-header")
  fi

  log "smoke test of ${BASE_URL} (budget ${SMOKE_TIMEOUT}s)"
  check_health
  check_queues
  local prefix batch_id
  prefix="smoke-$(date +%s)-$$"
  batch_id="$(create_batch "${prefix}")"
  log "created batch ${batch_id} with ${SMOKE_ITEMS} items"
  wait_for_batch "${batch_id}"
  check_results "${batch_id}" "${prefix}"
  echo "${PROG}: OK: batch ${batch_id}, ${SMOKE_ITEMS}/${SMOKE_ITEMS} results in ${SECONDS}s"
}

main "$@"
