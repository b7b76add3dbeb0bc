"""FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import require_api_key
from app.api.routes import (
    batches,
    health,
    metrics,
    openai_batches,
    openai_files,
    openai_inference,
    process,
    queues,
)
from app.core.errors import error_response, install_error_handlers
from app.services.batches import BatchService
from app.services.files import FileService
from app.services.llama import LlamaProbe
from app.services.metrics import Metrics, count_starts
from app.services.openai_compat import OpenAIService
from app.services.process import ProcessService
from app.services.queues import Reconciler
from app.services.retries import RetryService
from app.services.temporal import TemporalService
from app.services.workers import WorkerStarter
from kernel.config import Settings, load_settings_or_exit
from kernel.storage import ensure_bucket, make_minio
from kernel.supervisor import SupervisorControl

logger = logging.getLogger(__name__)

DESCRIPTION = """
Durable LLM batch jobs on one GPU box (or many), driven by Temporal and llama-server.

* `POST /batch` runs many requests (OpenAI batch lines) and writes JSONL results to S3.
* `POST /process` runs one request and answers synchronously when it finishes in time.
* Workers start on demand; `GET /queues` shows them, `GET /health` shows every dependency.

* Under `/v1`, OpenAI's Files and Batches API and its chat, completion and embedding routes,
  so the official `openai` client works with `base_url="http://HOST:8000/v1"`.

When `API_KEY` is set, every route needs `Authorization: Bearer <key>` except `GET /health`
and the documentation (`/docs`, `/redoc`, `/openapi.json`: they hold no data).
Errors have the shape `{"error": {"code", "type", "message"}}`; under `/v1` they have
OpenAI's, `{"error": {"message", "type", "param", "code"}}`.
"""

# Uploads stream to disk and then to the bucket, so MAX_REQUEST_BYTES does not apply to them.
STREAMED_UPLOADS = frozenset({"/v1/files"})


async def _ensure_bucket_in_background(settings: Settings) -> None:
    """S3 may come up after the API; keep trying quietly until the bucket exists."""
    client = make_minio(settings, probe=True)
    delay = 0.5
    while True:
        try:
            await asyncio.to_thread(ensure_bucket, client, settings.MINIO_BUCKET)
            return
        except Exception as exc:
            logger.debug("bucket %s not ready yet: %s", settings.MINIO_BUCKET, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class BodyLimit:
    """Pure ASGI middleware: refuses a request body over `limit` bytes with a 413 naming the
    limit, whether or not it comes with a Content-Length. A chunked body is counted as it
    is received and refused as soon as it passes the limit, never read whole first."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _message(self, size: str) -> str:
        return (
            f"request body is {size} bytes; the limit is {self.limit} (MAX_REQUEST_BYTES); "
            "upload large inputs to the bucket and pass input_key"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in STREAMED_UPLOADS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.limit:
            response = error_response(413, "payload_too_large", self._message(length), path=path)
            await response(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI re-raises an HTTPException met while reading the body, and
                    # the app's handler turns it into the usual error shape.
                    raise HTTPException(413, self._message(f"more than {self.limit}"))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except HTTPException as exc:
            if started or exc.status_code != 413:
                raise
            response = error_response(413, "payload_too_large", str(exc.detail), path=path)
            await response(scope, receive, send)


class RequestMetrics:
    """Times every request into `llm_batch_http_request_duration_seconds` by route template.

    Plain ASGI: Starlette's `BaseHTTPMiddleware` runs each request through an extra task and
    memory streams, which costs the synchronous path about a millisecond.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # The router puts the matched route into the scope; its template (not the
            # concrete path) keeps the label set small.
            path = getattr(scope.get("route"), "path", None)
            collector = getattr(scope["app"].state, "metrics", None)
            if status is not None and path not in (None, "/metrics") and collector is not None:
                elapsed = time.perf_counter() - started
                collector.observe_request(scope["method"], path, status, elapsed)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings_or_exit()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        temporal = TemporalService(settings)
        app.state.metrics = Metrics(settings, temporal)
        supervisor = count_starts(SupervisorControl(settings.supervisor_socket), app.state.metrics)
        app.state.settings = settings
        app.state.temporal = temporal
        app.state.supervisor = supervisor
        app.state.s3_probe = make_minio(settings, probe=True)
        app.state.batches = BatchService(
            settings, temporal, make_minio(settings), make_minio(settings, fail_fast=True)
        )
        app.state.workers = WorkerStarter(supervisor, settings.AUTO_START_WORKERS)
        app.state.llama = LlamaProbe(settings.LLAMA_URL)
        app.state.process = ProcessService(settings, temporal, app.state.workers)
        app.state.files = FileService(settings, make_minio(settings))
        app.state.retries = RetryService(app.state.batches)
        app.state.openai = OpenAIService(
            settings, app.state.batches, app.state.files, app.state.process, app.state.llama
        )
        reconciler = Reconciler(settings, temporal, supervisor)
        if settings.AUTO_START_WORKERS:
            reconciler.start()
        bucket_task = asyncio.create_task(_ensure_bucket_in_background(settings))
        try:
            yield
        finally:
            bucket_task.cancel()
            await reconciler.stop()
            await app.state.llama.aclose()
            await temporal.close()

    # The docs page's assets (Swagger UI, ReDoc) are served by the API itself: /docs works
    # on a box with no internet access.
    app = FastAPIOffline(
        title="LLM Batch API",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.MAX_REQUEST_BYTES)
    app.add_middleware(RequestMetrics)
    protected = [Depends(require_api_key)]
    app.include_router(health.router)
    app.include_router(queues.router, dependencies=protected)
    app.include_router(batches.router, dependencies=protected)
    app.include_router(process.router, dependencies=protected)
    app.include_router(metrics.router, dependencies=protected)
    app.include_router(openai_files.router, dependencies=protected)
    app.include_router(openai_batches.router, dependencies=protected)
    app.include_router(openai_inference.router, dependencies=protected)
    return app
