#!/usr/bin/env bash
# Boots the app image the way a hybrid-mode instance runs, for the CI image guardrail
# (.github/workflows/ci-minimal-image.yml); works on any machine with Docker.
#
#   start  Temporal dev server and MinIO in containers of the base image (its pinned,
#          checksum-verified binaries), then the app container in DEPLOY_MODE=hybrid pointing
#          at them, with the tiny model mounted; waits until the API answers /health.
#   logs   prints everything useful after a failure: container states, container logs, and
#          the supervisord program logs inside the app container.
#   stop   removes the containers and their network (safe to run twice).
#
# Then: scripts/container_smoke.sh "http://127.0.0.1:${APP_PORT}" "${API_KEY}"
set -euo pipefail

readonly BASE_IMAGE="${BASE_IMAGE:-llm-batch-base:local}"
readonly APP_IMAGE="${APP_IMAGE:-llm-batch:local}"
readonly PREFIX="${CI_BOOT_PREFIX:-llmb-ci}"
readonly NETWORK="${PREFIX}-net"
readonly TEMPORAL="${PREFIX}-temporal"
readonly MINIO="${PREFIX}-minio"
readonly APP="${PREFIX}-app"
readonly APP_PORT="${APP_PORT:-8000}"
readonly MODEL_DIR="${MODEL_DIR:-models}"
readonly MODEL_FILE="${MODEL_FILE:-tiny-llama.gguf}"
readonly API_KEY="${API_KEY:-ci-smoke-key}"
readonly MINIO_ACCESS_KEY="${MINIO_ACCESS_KEY:-ci-access-key}"
readonly MINIO_SECRET_KEY="${MINIO_SECRET_KEY:-ci-secret-key}"
readonly MINIO_BUCKET="${MINIO_BUCKET:-llm-batch-ci}"
readonly BOOT_TIMEOUT="${BOOT_TIMEOUT:-180}"
readonly APP_DIR_IN_IMAGE="/opt/app"

usage() {
  cat <<USAGE
Usage: scripts/ci_image_boot.sh start|logs|stop

Environment (defaults in brackets):
  BASE_IMAGE     base image, also runs Temporal and MinIO [llm-batch-base:local]
  APP_IMAGE      app image to boot [llm-batch:local]
  APP_PORT       host port of the API, on 127.0.0.1 [8000]
  MODEL_DIR      folder holding MODEL_FILE, mounted at /models [models]
  MODEL_FILE     GGUF served by llama-server [tiny-llama.gguf]
  API_KEY        key the API requires (it binds 0.0.0.0 in the container) [ci-smoke-key]
  BOOT_TIMEOUT   seconds to wait for each service [180]
  CI_BOOT_PREFIX container name prefix [llmb-ci]
  DEPLOY_TRACE=1 trace every command (set -x)
USAGE
}

log() { printf '[ci-boot] %s\n' "$*" >&2; }
die() { printf '[ci-boot] error: %s\n' "$*" >&2; exit 1; }

running() { [[ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" == true ]]; }

# wait_until WHAT CONTAINER COMMAND...: retries COMMAND until it succeeds, the container
# stops, or BOOT_TIMEOUT passes.
wait_until() {
  local what="$1" container="$2"
  shift 2
  local deadline=$((SECONDS + BOOT_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    running "${container}" || die "${what}: container ${container} exited; run '$0 logs'"
    ((SECONDS < deadline)) || die "${what}: not ready after ${BOOT_TIMEOUT}s; run '$0 logs'"
    sleep 2
  done
  log "${what}: ready after ${SECONDS}s"
}

start_dependencies() {
  docker network inspect "${NETWORK}" >/dev/null 2>&1 || docker network create "${NETWORK}" >/dev/null
  log "starting Temporal (${TEMPORAL}) and MinIO (${MINIO}) from ${BASE_IMAGE}"
  local temporal_args=(
    temporal server start-dev --headless --ip 0.0.0.0 --port 7233 --namespace default
    --dynamic-config-value frontend.enableServerVersionCheck=false
    --dynamic-config-value 'matching.TaskQueueInfoByBuildIdTTL="200ms"'
    --log-level warn
  )
  docker run -d --name "${TEMPORAL}" --network "${NETWORK}" "${BASE_IMAGE}" \
    "${temporal_args[@]}" >/dev/null
  docker run -d --name "${MINIO}" --network "${NETWORK}" \
    -e MINIO_ROOT_USER="${MINIO_ACCESS_KEY}" -e MINIO_ROOT_PASSWORD="${MINIO_SECRET_KEY}" \
    "${BASE_IMAGE}" minio server /tmp/minio-data --address :9000 --console-address :9001 >/dev/null
  wait_until "Temporal" "${TEMPORAL}" \
    docker exec "${TEMPORAL}" temporal operator cluster health --address 127.0.0.1:7233
  wait_until "MinIO" "${MINIO}" \
    docker exec "${MINIO}" curl -fsS http://127.0.0.1:9000/minio/health/live
}

start_app() {
  local model_dir
  model_dir="$(cd "${MODEL_DIR}" && pwd)" || die "MODEL_DIR ${MODEL_DIR} does not exist"
  [[ -f "${model_dir}/${MODEL_FILE}" ]] || die "no model at ${model_dir}/${MODEL_FILE}"
  local env=(
    -e DEPLOY_MODE=hybrid
    -e API_HOST=0.0.0.0 -e API_PORT=8000 -e API_KEY="${API_KEY}"
    -e TEMPORAL_ADDRESS="${TEMPORAL}:7233" -e TEMPORAL_NAMESPACE=default
    -e MINIO_ENDPOINT="${MINIO}:9000" -e MINIO_SECURE=false
    -e MINIO_ACCESS_KEY="${MINIO_ACCESS_KEY}" -e MINIO_SECRET_KEY="${MINIO_SECRET_KEY}"
    -e MINIO_BUCKET="${MINIO_BUCKET}"
    -e LLAMA_MODEL="/models/${MODEL_FILE}" -e LLAMA_PARALLEL=2
    -e WORKER_IDLE_EXIT_SECONDS=120
  )
  log "starting the app (${APP}) from ${APP_IMAGE} on 127.0.0.1:${APP_PORT}"
  docker run -d --name "${APP}" --network "${NETWORK}" -p "127.0.0.1:${APP_PORT}:8000" \
    -v "${model_dir}:/models:ro" "${env[@]}" "${APP_IMAGE}" >/dev/null
  # Answering at all is enough here; container_smoke.sh waits for "ok" within its budget.
  wait_until "API" "${APP}" curl -fsS -o /dev/null "http://127.0.0.1:${APP_PORT}/health"
}

cmd_start() {
  command -v docker >/dev/null || die "docker is required"
  command -v curl >/dev/null || die "curl is required"
  start_dependencies
  start_app
}

cmd_logs() {
  local container
  docker ps -a --filter "name=${PREFIX}-" --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}' || true
  for container in "${APP}" "${TEMPORAL}" "${MINIO}"; do
    echo "::group::docker logs ${container}"
    docker logs --tail 300 "${container}" 2>&1 || true
    echo "::endgroup::"
  done
  if running "${APP}"; then
    echo "::group::supervisord programs in ${APP}"
    docker exec "${APP}" bash -c "cd ${APP_DIR_IN_IMAGE} && bash scripts/supervisorctl.sh status" || true
    echo "::endgroup::"
  fi
  # The program logs live in the container even when it has exited.
  local logs
  logs="$(mktemp -d)"
  if docker cp "${APP}:${APP_DIR_IN_IMAGE}/data/logs" "${logs}/" >/dev/null 2>&1; then
    local file
    for file in "${logs}"/logs/*.log; do
      [[ -s "${file}" ]] || continue
      echo "::group::${file##*/} (last 200 lines)"
      tail -n 200 "${file}"
      echo "::endgroup::"
    done
  else
    log "no program logs found in ${APP}:${APP_DIR_IN_IMAGE}/data/logs"
  fi
  rm -rf -- "${logs}"
}

cmd_stop() {
  docker rm -f "${APP}" "${TEMPORAL}" "${MINIO}" >/dev/null 2>&1 || true
  docker network rm "${NETWORK}" >/dev/null 2>&1 || true
  log "removed ${APP}, ${TEMPORAL}, ${MINIO} and ${NETWORK}"
}

main() {
  [[ "${DEPLOY_TRACE:-0}" == 1 ]] && set -x
  case "${1:-}" in
    start) cmd_start ;;
    logs) cmd_logs ;;
    stop) cmd_stop ;;
    -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
