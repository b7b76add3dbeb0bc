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

from app.core.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from app.services.temporal import TemporalService, TemporalUnavailable
from kernel.config import Settings
from kernel.contract import (
    BATCH_WORKFLOW,
    BatchErrors,
    BatchInput,
    BatchState,
    BatchStatus,
    errors_key,
    input_key,
    output_key,
)
from kernel.results import ShardResults

logger = logging.getLogger(__name__)

STREAM_CHUNK_BYTES = 256 * 1024
_STATUS_BY_EXECUTION: dict[WorkflowExecutionStatus | None, BatchState] = {
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


def batch_status(
    batch_id: str, execution_status: WorkflowExecutionStatus | None, memo: Mapping[str, Any]
) -> BatchStatus:
    """The batch as its workflow published it; a closed workflow's own status wins."""
    batch = BatchStatus.model_validate({**memo, "id": batch_id})
    closed_as = _STATUS_BY_EXECUTION.get(execution_status)
    if closed_as is None:
        return batch
    changes: dict[str, Any] = {"status": closed_as}
    if closed_as == "failed" and batch.errors is None:
        changes["errors"] = BatchErrors(message="the batch workflow failed; see the worker-cpu log")
    changes["output_key"] = batch.output_key or output_key(batch_id)
    changes["error_key"] = batch.error_key or errors_key(batch_id)
    return batch.model_copy(update=changes)


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
    ) -> BatchStatus:
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
        batch = BatchStatus(
            id=batch_id, created_at=now, endpoint=endpoint, input_key=key, metadata=metadata
        )
        params = BatchInput(
            batch_id=batch_id,
            bucket=self.bucket,
            input_key=key,
            endpoint=endpoint,
            defaults=defaults,
            shard_size=shard_size or self.settings.BATCH_SHARD_SIZE,
            window=self.settings.BATCH_WINDOW,
            follow_capacity=True,
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
                memo=batch.memo(),
            )
        except RPCError as exc:
            raise ServiceUnavailable(f"could not start the batch workflow: {exc}") from exc
        logger.info("batch %s submitted (%s)", batch_id, key)
        return batch

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

    async def get(self, batch_id: str) -> BatchStatus:
        _, description = await self._describe(batch_id)
        return batch_status(batch_id, description.status, await description.memo())

    async def recent(self, limit: int) -> list[BatchStatus]:
        client = await temporal_client(self.temporal)
        batches: list[BatchStatus] = []
        query = f"WorkflowType = '{BATCH_WORKFLOW}'"
        async for execution in client.list_workflows(query, limit=limit * 2):
            if execution.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                continue  # an earlier run of a batch listed again by its latest run
            batches.append(batch_status(execution.id, execution.status, await execution.memo()))
            if len(batches) >= limit:
                break
        return batches

    async def cancel(self, batch_id: str) -> BatchStatus:
        handle, description = await self._describe(batch_id)
        current = batch_status(batch_id, description.status, await description.memo())
        if current.is_terminal:
            raise Conflict(f"batch {batch_id} is already {current.status}")
        await handle.cancel()
        logger.info("batch %s: cancel requested", batch_id)
        return current.model_copy(update={"status": "cancelling"})

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

    def _stream_partial(self, batch: BatchStatus, successes: bool) -> Iterator[bytes]:
        """Lines of the shards finished so far, in shard order."""
        results = ShardResults(self.s3, self.bucket, batch.id)
        for success, line in results.lines(batch.shard_count):
            if success == successes:
                yield line + b"\n"

    async def results(self, batch_id: str, errors: bool) -> tuple[BatchStatus, Iterator[bytes]]:
        """(batch, byte iterator) of the output (or error) lines: whole file when the
        batch is over, the finished shards' lines while it runs."""
        batch = await self.get(batch_id)
        if batch.is_terminal:
            key = errors_key(batch_id) if errors else output_key(batch_id)
            return batch, self._stream_object(key)
        return batch, self._stream_partial(batch, successes=not errors)
