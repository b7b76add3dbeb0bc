"""Batches: stage the input, start the workflow, report status from the workflow's memo,
stream results from the bucket."""

from __future__ import annotations

import asyncio
import heapq
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
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from app.core.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from app.services.pricing import gpu_price_per_hour
from app.services.temporal import TemporalService, TemporalUnavailable
from kernel.config import Settings
from kernel.contract import (
    BATCH_WORKFLOW,
    BatchErrors,
    BatchInput,
    BatchState,
    BatchStatus,
    completion_window_seconds,
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
    if closed_as == "completed" and batch.status == "cancelled":
        closed_as = "cancelled"  # stopped by its budget: the run itself ended normally
    if closed_as == "completed" and batch.status == "expired":
        closed_as = "expired"  # the workflow ends normally when its window runs out
    changes: dict[str, Any] = {"status": closed_as}
    if closed_as == "failed" and batch.errors is None:
        changes["errors"] = BatchErrors(message="the batch workflow failed; see the worker-cpu log")
    changes["output_key"] = batch.output_key or output_key(batch_id)
    changes["error_key"] = batch.error_key or errors_key(batch_id)
    return batch.model_copy(update=changes)


def cancel_requested(description: WorkflowExecutionDescription) -> bool:
    """Temporal's own record that a cancel was requested: set by the cancel call itself,
    before the workflow has run and published `cancelling` (tens of milliseconds, seconds
    on a busy CPU worker)."""
    return bool(description.raw_description.workflow_extended_info.cancel_requested)


def as_cancelling(batch: BatchStatus) -> BatchStatus:
    """`batch` as its workflow will publish it once it has seen the cancel."""
    cancelling_at = batch.cancelling_at or int(time.time())
    return batch.model_copy(update={"status": "cancelling", "cancelling_at": cancelling_at})


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
        max_cost_usd: float | None = None,
        completion_window: str | None = None,
    ) -> BatchStatus:
        price = await gpu_price_per_hour(self.settings)
        if max_cost_usd is not None and not price:
            raise InvalidRequest(
                "max_cost_usd needs a box price: set GPU_PRICE_PER_HOUR (USD per hour) "
                "or install and configure the vastai CLI"
            )
        try:
            window_s = completion_window_seconds(completion_window) if completion_window else 0
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="completion_window") from None
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
        expires_at = now + window_s if window_s else None
        batch = BatchStatus(
            id=batch_id,
            created_at=now,
            endpoint=endpoint,
            input_key=key,
            metadata=metadata,
            gpu_price_per_hour=price or None,
            max_cost_usd=max_cost_usd,
            completion_window=completion_window,
            expires_at=expires_at,
        )
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
            gpu_price_per_hour=price,
            max_cost_usd=max_cost_usd,
            expires_at=expires_at or 0,
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
        batch = batch_status(batch_id, description.status, await description.memo())
        if batch.status in ("validating", "in_progress", "finalizing") and cancel_requested(
            description
        ):
            return as_cancelling(batch)  # the workflow has yet to publish it
        return batch

    async def recent(self, limit: int) -> list[BatchStatus]:
        """The `limit` batches created last, newest first.

        Temporal's visibility store lists open workflows before closed ones and closed ones
        by close time, so neither order is creation order (a batch still validating from
        an hour ago came above one finished a second ago). Every open batch is read (there
        are few at a time), then closed ones in close-time order until none closing
        earlier can be among the newest: a batch closes after it was created.
        """
        client = await temporal_client(self.temporal)
        base = f"WorkflowType = '{BATCH_WORKFLOW}'"
        page_size = min(max(limit, 20), 1000)
        newest: list[tuple[int, float, str]] = []  # min-heap of the `limit` newest keys
        found: dict[tuple[int, float, str], BatchStatus] = {}

        async def add(execution: WorkflowExecution) -> None:
            batch = batch_status(execution.id, execution.status, await execution.memo())
            started = execution.start_time.timestamp() if execution.start_time else 0.0
            key = (batch.created_at or int(started), started, execution.id)
            found[key] = batch
            heapq.heappush(newest, key)
            if len(newest) > limit:
                del found[heapq.heappop(newest)]

        async for execution in client.list_workflows(
            f"{base} AND ExecutionStatus = 'Running'", page_size=page_size
        ):
            await add(execution)
        async for execution in client.list_workflows(
            f"{base} AND ExecutionStatus != 'Running'", page_size=page_size
        ):
            if execution.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                continue  # an earlier run of a batch, listed again by its latest run
            closed = execution.close_time.timestamp() if execution.close_time else 0.0
            if len(newest) >= limit and closed < newest[0][0]:
                break  # this and every later one was created before the oldest kept
            await add(execution)
        return [found[key] for key in sorted(found, reverse=True)]

    async def page(self, limit: int, after: str | None = None) -> tuple[list[BatchStatus], bool]:
        """(batches, has_more): newest first, starting after the batch `after`."""
        client = await temporal_client(self.temporal)
        batches: list[BatchStatus] = []
        skipping = after is not None
        query = f"WorkflowType = '{BATCH_WORKFLOW}'"
        async for execution in client.list_workflows(query):
            if execution.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                continue
            if skipping:
                skipping = execution.id != after
                continue
            if len(batches) == limit:
                return batches, True
            batches.append(batch_status(execution.id, execution.status, await execution.memo()))
        if skipping:
            raise InvalidRequest(f"after: no batch with id {after!r}", param="after")
        return batches, False

    async def cancel(self, batch_id: str) -> BatchStatus:
        handle, description = await self._describe(batch_id)
        current = batch_status(batch_id, description.status, await description.memo())
        if current.is_terminal:
            raise Conflict(f"batch {batch_id} is already {current.status}")
        await handle.cancel()
        logger.info("batch %s: cancel requested", batch_id)
        return as_cancelling(current)

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
