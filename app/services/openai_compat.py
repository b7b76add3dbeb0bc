"""The OpenAI-compatible view: the same batches `/batch` runs, seen as OpenAI batch objects;
synchronous requests through the `/process` path, answered in OpenAI's shape."""

from __future__ import annotations

import logging
from typing import Any

from app.api.openai_schemas import OpenAIBatch
from app.core.errors import AppError, Conflict, InvalidRequest, NotFound
from app.services.batches import BatchService
from app.services.files import FileService, StoredFile
from app.services.llama import LlamaProbe, LlamaUnavailable
from app.services.process import ProcessService
from kernel.config import Settings
from kernel.endpoints import EMBEDDINGS_OFF_CODE, EMBEDDINGS_OFF_MESSAGE, ENDPOINTS
from kernel.keys import batch_file_id, batch_id_of_file, file_id_for_key
from kernel.lines import LineError, normalize_request
from kernel.view import BatchView

logger = logging.getLogger(__name__)


class UpstreamError(AppError):
    """llama-server refused or failed a synchronous request: its status, its message."""

    def __init__(self, status_code: int, message: str, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code
        self.error_type = "invalid_request_error" if status_code < 500 else "server_error"

    headers = {"x-should-retry": "false"}


class StillRunning(AppError):
    status_code = 504
    error_type = "timeout"
    openai_code = "timeout"
    headers = {"x-should-retry": "false"}


def served_model_name(settings: Settings) -> str:
    """The model's one id: llama-server runs with `--alias LLAMA_MODEL_ALIAS`."""
    return settings.LLAMA_MODEL_ALIAS or "default"


def openai_batch(batch: BatchView, model: str | None = None) -> OpenAIBatch:
    """A batch as the `openai` client's `Batch` model has it."""
    counts = batch.request_counts
    errors = None
    if batch.errors is not None:
        errors = {
            "object": "list",
            "data": [{"code": "batch_failed", "message": batch.errors.message}],
        }
    key = batch.input_key or ""
    input_file_id = file_id_for_key(key) or key
    over = batch.is_terminal and batch.output_key is not None
    fields: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": model,
        "errors": errors,
        "input_file_id": input_file_id,
        "completion_window": batch.completion_window or "none",
        "status": batch.status,
        "output_file_id": batch_file_id(batch.id, "output") if over and counts.completed else None,
        "error_file_id": batch_file_id(batch.id, "errors") if over and counts.failed else None,
        "created_at": batch.created_at or 0,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at,
        "completed_at": batch.completed_at,
        "failed_at": batch.failed_at,
        "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": batch.cancelled_at,
        "request_counts": counts.model_dump(),
        "usage": {
            "input_tokens": batch.usage.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": batch.usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": batch.usage.total_tokens,
        },
        "metadata": batch.metadata or None,
    }
    return OpenAIBatch.model_validate(fields)


class OpenAIService:
    def __init__(
        self,
        settings: Settings,
        batches: BatchService,
        files: FileService,
        process: ProcessService,
        llama: LlamaProbe,
    ) -> None:
        self.settings = settings
        self.llama = llama
        self.batches = batches
        self.files = files
        self.process = process
        self.model = served_model_name(settings)

    # Batches ---------------------------------------------------------------------------

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        idempotency_key: str | None = None,
    ) -> OpenAIBatch:
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(
                f"endpoint {endpoint!r} is not supported; use one of {', '.join(ENDPOINTS)}",
                param="endpoint",
                code="invalid_value",
            )
        key = await self.files.batch_input_key(input_file_id)
        batch = await self.batches.submit(
            items=None,
            input_object=key,
            endpoint=endpoint,
            defaults={},
            metadata=metadata or {},
            completion_window=completion_window,
            idempotency_key=idempotency_key,
        )
        return openai_batch(batch, self.model)

    async def get_batch(self, batch_id: str) -> OpenAIBatch:
        return openai_batch(await self.batches.get(batch_id), self.model)

    async def list_batches(self, limit: int, after: str | None) -> tuple[list[OpenAIBatch], bool]:
        page, has_more = await self.batches.page(limit, after)
        return [openai_batch(batch, self.model) for batch in page], has_more

    async def cancel_batch(self, batch_id: str) -> OpenAIBatch:
        return openai_batch(await self.batches.cancel(batch_id), self.model)

    # Files -----------------------------------------------------------------------------

    async def delete_file(self, file_id: str) -> StoredFile:
        """Deletes a file; a batch's own file only once the batch is over (409 before)."""
        batch_id = batch_id_of_file(file_id)
        if batch_id is not None:
            try:
                batch = await self.batches.get(batch_id)
            except NotFound:
                batch = None
            if batch is not None and not batch.is_terminal:
                raise Conflict(
                    f"file {file_id} belongs to batch {batch_id}, which is {batch.status}: "
                    f"cancel it first (POST /v1/batches/{batch_id}/cancel)",
                    param="file_id",
                )
        return await self.files.delete(file_id)

    # Synchronous requests --------------------------------------------------------------

    async def run(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request through the durable, priority path; llama-server's answer body."""
        if body.get("stream"):
            raise InvalidRequest(
                "stream=true is not supported: answers come whole (they run as a durable "
                "request); send stream=false or leave it out",
                param="stream",
                code="unsupported_value",
            )
        if endpoint == "/v1/embeddings" and not self.settings.LLAMA_EMBEDDINGS:
            raise InvalidRequest(EMBEDDINGS_OFF_MESSAGE, code=EMBEDDINGS_OFF_CODE)
        try:
            request = normalize_request({"custom_id": "v1", "url": endpoint, "body": body})
        except LineError as exc:
            raise InvalidRequest(str(exc)) from None
        timeout_s = self.settings.PROCESS_TIMEOUT_SECONDS
        finished, result = await self.process.submit(request, timeout_s)
        if not finished:
            raise StillRunning(
                f"no answer within {timeout_s:g}s (PROCESS_TIMEOUT_SECONDS); the request "
                f"keeps running: poll GET /process/{result.id} for its result"
            )
        if result.status != "completed" or result.output is None:
            message = (result.error or {}).get("message") or "the request failed"
            raise UpstreamError(500, f"request {result.id} failed: {message}")
        output = result.output
        response = output["response"]
        status_code = int(response.get("status_code", 500))
        if status_code == 200:
            answer: dict[str, Any] = response["body"]
            return answer
        error = output.get("error") or {}
        if error.get("code") == EMBEDDINGS_OFF_CODE:  # another box's llama-server
            raise InvalidRequest(EMBEDDINGS_OFF_MESSAGE, code=EMBEDDINGS_OFF_CODE)
        raise UpstreamError(status_code, str(error.get("message") or f"HTTP {status_code}"))

    # Models ----------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """What llama-server says it serves; the LLAMA_MODEL setting when it is down."""
        try:
            models = await self.llama.models()
            if models:
                return models
        except LlamaUnavailable as exc:
            logger.info("%s; using LLAMA_MODEL", exc)
        return [{"id": self.model, "object": "model", "created": 0, "owned_by": "llamacpp"}]
