# App image: the project's code on top of the base image (Dockerfile.base), started by the
# supervisord launcher. The base carries the runtime (llama-server, Python venv, supervisor,
# Temporal CLI, MinIO); this image adds only code, so it rebuilds in seconds.
#
#   docker build -f Dockerfile --build-arg BASE_IMAGE=llm-batch-base:local -t llm-batch:local .
#   docker run --rm -p 8000:8000 -e DEPLOY_MODE=standalone -e API_HOST=0.0.0.0 \
#     -e API_KEY=change-me -v "$PWD/models:/models:ro" -e LLAMA_MODEL=/models/model.gguf \
#     llm-batch:local

ARG BASE_IMAGE=llm-batch-base:local
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    APP_DIR=/opt/app

WORKDIR /opt/app

# Drift check first: it is cheap and fails fast when the base image was built from other
# requirements than this checkout's (rebuild Dockerfile.base, or pass the matching BASE_IMAGE).
COPY requirements.instance.txt ./
RUN if ! cmp -s requirements.instance.txt "${INSTANCE_VENV}/requirements.instance.txt"; then \
        echo "requirements.instance.txt differs from the one baked into the base image:" >&2; \
        diff -u "${INSTANCE_VENV}/requirements.instance.txt" requirements.instance.txt >&2 || true; \
        echo "rebuild the base image (Dockerfile.base) from this checkout" >&2; \
        exit 1; \
    fi

# Least to most often changed, so an edit to app/ reuses every layer above it.
COPY supervisord.conf ./
COPY scripts/ scripts/
# The instance side of the deploy (the launcher checks ports with deploy.instance.ports).
COPY deploy/__init__.py deploy/
COPY deploy/instance/ deploy/instance/
COPY kernel/ kernel/
COPY workers/ workers/
COPY app/ app/

# 8000: API (fastapi). 3000: web dashboard (autostarts in standalone mode only).
EXPOSE 8000 3000

# Liveness of the API: /health answers 200 as long as the API is up, "degraded" included.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/bin/bash", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${API_PORT:-8000}/health\""]

CMD ["/bin/bash", "/opt/app/scripts/start_services.sh", "--foreground"]
