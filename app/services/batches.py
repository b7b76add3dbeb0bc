"""Batches: stage the input, start the workflow, report status from the workflow's memo,
stream results from the bucket."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from minio import Minio
from minio.error import S3Error
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from app.core.config import Settings
from app.core.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from app.services.temporal import TemporalService, TemporalUnavailable
from workers.shared.jsonl import is_success_line, iter_result_lines
from workers.shared.models import (
    BATCH_WORKFLOW,
    CHAT_COMPLETIONS,
    BatchInput,
    errors_key,
    input_key,
    invalid_lines_key,
    output_key,
    result_key,
)

logger = logging.getLogger(__name__)

STREAM_CHUNK_BYTES = 256 * 1024
TERMINAL = frozenset({"completed", "failed", "cancelled"})
_STATUS_BY_EXECUTION: dict[WorkflowExecutionStatus | None, str] = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "cancelled",
    WorkflowExecutionStatus.TERMINATED: "failed",
    WorkflowExecutionStatus.TIMED_OUT: "failed",
}


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


async def temporal_client(temporal: TemporalService) -> Client:
    try:
        return await temporal.client()
    except TemporalUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc


def batch_object(
    batch_id: str, execution_status: WorkflowExecutionStatus | None, memo: Mapping[str, Any]
) -> dict[str, Any]:
    """The OpenAI-shaped batch object, from the workflow's memo and execution status."""
    status = _STATUS_BY_EXECUTION.get(execution_status) or memo.get("status", "validating")
    if status == "failed" and "error" not in memo and execution_status is not None:
        memo = {**memo, "error": "the batch workflow failed; see the worker-cpu log"}
    counts = memo.get("request_counts") or {"total": 0, "completed": 0, "failed": 0}
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": memo.get("endpoint", CHAT_COMPLETIONS),
        "status": status,
        "input_key": memo.get("input_key"),
        "output_key": memo.get("output_key", output_key(batch_id)),
        "error_key": memo.get("error_key", errors_key(batch_id)),
        "request_counts": counts,
        "errors": {"message": memo["error"]} if memo.get("error") else None,
        "created_at": memo.get("created_at"),
        "in_progress_at": memo.get("in_progress_at"),
        "finalizing_at": memo.get("finalizing_at"),
        "completed_at": memo.get("completed_at"),
        "failed_at": memo.get("failed_at"),
        "cancelling_at": memo.get("cancelling_at"),
        "cancelled_at": memo.get("cancelled_at"),
        "metadata": memo.get("metadata") or {},
    }


class BatchService:
    def __init__(self, settings: Settings, temporal: TemporalService, s3: Minio) -> None:
        self.settings = settings
        self.temporal = temporal
        self.s3 = s3
        self.bucket = settings.MINIO_BUCKET

    # Submission ------------------------------------------------------------------------

    def _stage_items(self, batch_id: str, items: list[Any]) -> str:
        payload = b"".join(json.dumps(item).encode() + b"\n" for item in items)
        key = input_key(batch_id)
        self.s3.put_object(
            self.bucket, key, io.BytesIO(payload), len(payload), content_type="application/x-ndjson"
        )
        return key

    def _check_input_key(self, key: str) -> None:
        try:
            self.s3.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise InvalidRequest(
                    f"input_key {key!r} does not exist in bucket {self.bucket!r}"
                ) from None
            raise

    async def submit(
        self,
        *,
        items: list[Any] | None,
        input_object: str | None,
        endpoint: str,
        defaults: dict[str, Any],
        metadata: dict[str, str],
        shard_size: int | None = None,
    ) -> dict[str, Any]:
        client = await temporal_client(self.temporal)
        batch_id = new_batch_id()
        try:
            if items is not None:
                if len(items) > self.settings.MAX_INLINE_ITEMS:
                    raise InvalidRequest(
                        f"items has {len(items)} lines; the inline limit is "
                        f"{self.settings.MAX_INLINE_ITEMS}: upload a JSONL object and pass "
                        "input_key instead"
                    )
                key = await asyncio.to_thread(self._stage_items, batch_id, items)
            else:
                assert input_object is not None
                key = input_object
                await asyncio.to_thread(self._check_input_key, key)
        except S3Error as exc:
            raise ServiceUnavailable(f"S3 error while staging the input: {exc}") from exc
        except OSError as exc:
            raise ServiceUnavailable(f"S3 at {self.settings.MINIO_ENDPOINT}: {exc}") from exc

        now = int(time.time())
        memo = {
            "status": "validating",
            "created_at": now,
            "endpoint": endpoint,
            "input_key": key,
            "metadata": metadata,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        params = BatchInput(
            batch_id=batch_id,
            bucket=self.bucket,
            input_key=key,
            endpoint=endpoint,
            defaults=defaults,
            shard_size=shard_size or self.settings.BATCH_SHARD_SIZE,
            window=self.settings.BATCH_WINDOW,
            gpu_task_queue=self.settings.GPU_TASK_QUEUE,
            created_at=now,
            metadata=metadata,
        )
        try:
            await client.start_workflow(
                BATCH_WORKFLOW,
                params,
                id=batch_id,
                task_queue=self.settings.CPU_TASK_QUEUE,
                memo=memo,
            )
        except RPCError as exc:
            raise ServiceUnavailable(f"could not start the batch workflow: {exc}") from exc
        logger.info("batch %s submitted (%s)", batch_id, key)
        return batch_object(batch_id, None, memo)

    # Status ----------------------------------------------------------------------------

    async def _describe(
        self, batch_id: str
    ) -> tuple[WorkflowHandle[Any, Any], WorkflowExecutionDescription]:
        client = await temporal_client(self.temporal)
        handle = client.get_workflow_handle(batch_id)
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise NotFound(f"no batch with id {batch_id!r}") from None
            raise ServiceUnavailable(f"Temporal: {exc}") from exc
        if description.workflow_type != BATCH_WORKFLOW:
            raise NotFound(f"no batch with id {batch_id!r}")
        return handle, description

    async def get(self, batch_id: str) -> dict[str, Any]:
        _, description = await self._describe(batch_id)
        return batch_object(batch_id, description.status, await description.memo())

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        client = await temporal_client(self.temporal)
        batches: list[dict[str, Any]] = []
        query = f"WorkflowType = '{BATCH_WORKFLOW}'"
        async for execution in client.list_workflows(query, limit=limit * 2):
            if execution.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                continue  # an earlier run of a batch listed again by its latest run
            batches.append(batch_object(execution.id, execution.status, await execution.memo()))
            if len(batches) >= limit:
                break
        return batches

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        handle, description = await self._describe(batch_id)
        current = batch_object(batch_id, description.status, await description.memo())
        if current["status"] in TERMINAL:
            raise Conflict(f"batch {batch_id} is already {current['status']}")
        await handle.cancel()
        logger.info("batch %s: cancel requested", batch_id)
        return {**current, "status": "cancelling"}

    # Results ---------------------------------------------------------------------------

    def _stream_object(self, key: str) -> Iterator[bytes]:
        try:
            response = self.s3.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return
            raise
        try:
            yield from response.stream(STREAM_CHUNK_BYTES)
        finally:
            response.close()
            response.release_conn()

    def _stream_partial(self, batch_id: str, successes: bool) -> Iterator[bytes]:
        """Lines of the shards finished so far, in shard order."""
        if not successes:
            yield from self._stream_object(invalid_lines_key(batch_id))
        prefix = f"{result_key(batch_id, 0).rsplit('/', 1)[0]}/"
        keys = sorted(o.object_name for o in self.s3.list_objects(self.bucket, prefix=prefix))
        for key in keys:
            for line in iter_result_lines(self._stream_object(key)):
                if is_success_line(line) == successes:
                    yield line + b"\n"

    async def results(self, batch_id: str, errors: bool) -> tuple[str, Iterator[bytes]]:
        """(status, byte iterator) of the output (or error) lines: whole file when the
        batch is over, the finished shards' lines while it runs."""
        batch = await self.get(batch_id)
        key = errors_key(batch_id) if errors else output_key(batch_id)
        if batch["status"] in TERMINAL:
            return batch["status"], self._stream_object(key)
        return batch["status"], self._stream_partial(batch_id, successes=not errors)
