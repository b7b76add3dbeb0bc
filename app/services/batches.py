"""Batches: stage the input, start the workflow, report status from the workflow's memo,
stream results from the bucket."""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from app.api.schemas import BatchDeleted
from app.core.errors import AppError, Conflict, Gone, InvalidRequest, NotFound, ServiceUnavailable
from app.services.deleted import deleted_kinds, deleted_message, record_deleted
from app.services.disk import ensure_room, is_storage_full, storage_full
from app.services.pricing import gpu_price_per_hour
from app.services.temporal import TemporalService, TemporalUnavailable
from kernel import keys, storage
from kernel.config import Settings
from kernel.endpoints import MAX_LINE_BYTES
from kernel.inputs import BATCH_WORKFLOW, BatchInput
from kernel.keys import (
    batch_objects_prefix,
    deleted_key,
    errors_key,
    file_id_for_key,
    input_key,
    output_key,
    parse_retry_link_key,
    retry_link_key,
    retry_links_prefix,
)
from kernel.lifecycle import BatchState, completion_window_seconds, is_final, timestamp_field
from kernel.lines import LineError, check_json_value
from kernel.results import ShardResults
from kernel.status import BatchErrors, BatchStatus
from kernel.view import BatchView

logger = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Starting a workflow while Temporal is away fails after this long (503), not a minute.
START_TIMEOUT = timedelta(seconds=10)
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
    batch_id: str,
    execution_status: WorkflowExecutionStatus | None,
    memo: Mapping[str, Any],
    closed_at: datetime | None = None,
) -> BatchStatus:
    """The batch as its workflow published it; a closed workflow's own status wins, and
    its close time stands in for a final timestamp the workflow could not publish (a
    terminated run)."""
    batch = BatchStatus.model_validate({**memo, "id": batch_id})
    closed_as = _STATUS_BY_EXECUTION.get(execution_status)
    if closed_as is None:
        return batch
    if closed_as == "completed" and is_final(batch.status):
        # The run ended normally with the final state it published: a budget stop
        # (cancelled) or an expiry.
        closed_as = batch.status
    changes: dict[str, Any] = {"status": closed_as}
    if batch.status != closed_as or batch.end_reason is None:
        changes["end_reason"] = closed_as
    stamp = timestamp_field(closed_as)
    if getattr(batch, stamp) is None and closed_at is not None:
        changes[stamp] = int(closed_at.timestamp())
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


def as_cancelling(batch: BatchStatus, now: float) -> BatchStatus:
    """`batch` as its workflow will publish it once it has seen the cancel."""
    cancelling_at = batch.cancelling_at or int(now)
    return batch.model_copy(update={"status": "cancelling", "cancelling_at": cancelling_at})


def idempotent_id(prefix: str, idempotency_key: str) -> str:
    """The workflow id a client's Idempotency-Key stands for: a retry gets the same one."""
    if not idempotency_key.strip() or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    return keys.idempotent_id(prefix, idempotency_key)


class IdempotencyKeyReused(AppError):
    """The IETF Idempotency-Key draft's answer to a key sent again with another body."""

    status_code = 422
    error_type = "idempotency_error"
    openai_code = "idempotency_key_reused"


# The memo entry holding the digest of the request a batch was started for.
REQUEST_DIGEST = "request_digest"


def request_digest(request: Mapping[str, Any]) -> str:
    """A digest of what a submission asked for, to tell a retry from a key reused."""
    try:
        text = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    except (ValueError, RecursionError):
        text = repr(request)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_defaults(defaults: dict[str, Any]) -> None:
    """`defaults` are merged into every line, so they must fit the per-line limit."""
    try:
        size = check_json_value(defaults, "defaults")
    except LineError as exc:
        raise InvalidRequest(str(exc)) from None
    if size > MAX_LINE_BYTES:
        raise InvalidRequest(
            f"defaults is {size} bytes; it is merged into every line, whose limit is "
            f"{MAX_LINE_BYTES} bytes (MAX_LINE_BYTES)"
        )


def _staged_line(item: Any) -> bytes:
    """One staged input line. An item JSON cannot carry (too deep for the encoder) is
    staged as a line that the split reports with the reason, like any bad line."""
    try:
        return json.dumps(item).encode() + b"\n"
    except (ValueError, RecursionError) as exc:
        reason = {"invalid_item": f"item cannot be written as JSON: {type(exc).__name__}"}
        return json.dumps(reason).encode() + b"\n"


class BatchService:
    def __init__(
        self, settings: Settings, temporal: TemporalService, s3: Minio, staging: Minio | None = None
    ) -> None:
        self.settings = settings
        self.temporal = temporal
        self.s3 = s3
        # Submission fails fast when S3 is away (503 within seconds); reads keep retrying.
        self.staging = staging or s3
        self.bucket = settings.MINIO_BUCKET

    # Submission ------------------------------------------------------------------------

    def _stage_items(self, batch_id: str, items: list[Any]) -> str:
        key = input_key(batch_id)
        with storage.JsonlSpool(self.staging, self.bucket) as staged:
            for item in items:
                staged.write(_staged_line(item))
            staged.upload(key)
        return key

    def _unstage(self, key: str) -> None:
        """Removes an input staged for a batch that never started (best effort)."""
        try:
            storage.remove(self.staging, self.bucket, key)
        except storage.S3_FAILURES as exc:
            logger.warning("could not remove the staged input %s: %s", key, exc)

    def _check_input_key(self, key: str) -> None:
        try:
            found = storage.exists(self.staging, self.bucket, key)
        except ValueError as exc:  # the client refuses the name itself
            raise InvalidRequest(f"input_key {key!r} is not a valid object name: {exc}") from None
        except S3Error as exc:
            if exc.code in ("InvalidObjectName", "KeyTooLongError", "InvalidArgument"):
                raise InvalidRequest(f"input_key {key!r} is not a valid object name") from None
            raise
        if not found:
            raise InvalidRequest(f"input_key {key!r} does not exist in bucket {self.bucket!r}")

    async def _existing(self, batch_id: str, idempotency_key: str, digest: str) -> BatchView | None:
        """The batch an Idempotency-Key started, when it exists and was started for the
        same request; 422 when the key was sent before with another body."""
        try:
            _, description = await self._describe(batch_id)
        except NotFound:
            return None
        stored = (await description.memo()).get(REQUEST_DIGEST)
        if stored is not None and stored != digest:  # batches from before have none
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idempotency_key!r} was already used for batch {batch_id} "
                "with a different request body; send a new key for a new batch",
                param="Idempotency-Key",
            )
        return await self.get(batch_id)

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
        idempotency_key: str | None = None,
        batch_id: str | None = None,
        retry_of: str | None = None,
    ) -> BatchView:
        """Stages the input and starts the batch. With an `idempotency_key`, the batch id
        comes from the key: a retry returns the batch the first request started. `batch_id`
        and `retry_of` are a retry's (app.services.retries): its id, chosen when its input
        was staged, and the batch it retries."""
        check_defaults(defaults)
        if items is not None and len(items) > self.settings.MAX_INLINE_ITEMS:
            raise InvalidRequest(
                f"items has {len(items)} lines; the inline limit is "
                f"{self.settings.MAX_INLINE_ITEMS} (MAX_INLINE_ITEMS): upload a JSONL object "
                "and pass input_key instead"
            )
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
        digest = request_digest(
            {
                "items": items,
                "input_key": input_object,
                "endpoint": endpoint,
                "defaults": defaults,
                "metadata": metadata,
                "shard_size": shard_size,
                "max_cost_usd": max_cost_usd,
                "completion_window": completion_window,
            }
        )
        if idempotency_key is not None:
            batch_id = idempotent_id("batch", idempotency_key)
            existing = await self._existing(batch_id, idempotency_key, digest)
            if existing is not None:
                logger.info("batch %s: returned again for its Idempotency-Key", batch_id)
                return existing
        elif batch_id is None:
            batch_id = new_batch_id()
        await ensure_room(self.settings, "new batches")
        staged = False
        try:
            if items is not None:
                key = await asyncio.to_thread(self._stage_items, batch_id, items)
                staged = True
            else:
                assert input_object is not None
                key = input_object
                await asyncio.to_thread(self._check_input_key, key)
        except S3Error as exc:
            if is_storage_full(exc):
                raise storage_full(self.settings, exc, "new batches") from exc
            raise ServiceUnavailable(f"S3 error while staging the input: {exc}") from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise ServiceUnavailable(
                f"S3 at {self.settings.MINIO_ENDPOINT} is not answering ({type(exc).__name__}); "
                "retry when it is back"
            ) from exc

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
            retry_of=retry_of,
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
                memo={**batch.memo(), REQUEST_DIGEST: digest},
                # A concurrent retry with the same key joins the batch already running.
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                rpc_timeout=START_TIMEOUT,
            )
        except WorkflowAlreadyStartedError:
            # Same key, batch already closed: the client gets that batch back.
            if idempotency_key is not None:
                existing = await self._existing(batch_id, idempotency_key, digest)
                if existing is not None:
                    return existing
            return await self.get(batch_id)
        except RPCError as exc:
            if staged:  # no orphaned input: a retry stages it again
                await asyncio.to_thread(self._unstage, key)
            raise ServiceUnavailable(f"could not start the batch workflow: {exc}") from exc
        logger.info("batch %s submitted (%s)", batch_id, key)
        if idempotency_key is not None:  # the first request's batch if one raced us
            raced = await self._existing(batch_id, idempotency_key, digest)
            if raced is not None:
                return raced
        return BatchView.of(batch, time.time())

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

    async def _read(self, description: WorkflowExecutionDescription, batch_id: str) -> BatchStatus:
        return batch_status(
            batch_id, description.status, await description.memo(), description.close_time
        )

    async def get(self, batch_id: str) -> BatchView:
        _, description = await self._describe(batch_id)
        batch = await self._read(description, batch_id)
        now = time.time()
        if batch.status in ("validating", "in_progress", "finalizing") and cancel_requested(
            description
        ):
            batch = as_cancelling(batch, now)  # the workflow has yet to publish it
        view = BatchView.of(batch, now)
        if view.is_terminal:  # only an ended batch is retried
            view.retried_by = await asyncio.to_thread(self._retried_by, batch_id)
        return view

    def _retried_by(self, batch_id: str) -> list[str]:
        """The batches retrying this one (their links in the bucket), oldest first; none
        when S3 does not answer (the status must not wait for it)."""
        try:
            links = list(storage.list_objects(self.s3, self.bucket, retry_links_prefix(batch_id)))
        except storage.S3_FAILURES as exc:
            logger.warning("batch %s: retry links unreadable: %s", batch_id, exc)
            return []
        found = []
        for link in links:
            retry_id = parse_retry_link_key(batch_id, link.object_name or "")
            if retry_id is not None:
                modified = link.last_modified.timestamp() if link.last_modified else 0.0
                found.append((modified, retry_id))
        return [retry_id for _, retry_id in sorted(found)]

    def link_retry(self, batch_id: str, retry_id: str, created_at: int) -> None:
        """Records that `retry_id` retries `batch_id` (`retried_by` on the original)."""
        record = {"retry_of": batch_id, "id": retry_id, "created_at": created_at}
        storage.put_bytes(
            self.s3,
            self.bucket,
            retry_link_key(batch_id, retry_id),
            json.dumps(record).encode(),
            content_type="application/json",
        )

    async def start_input(self, batch_id: str) -> BatchInput:
        """What the batch's workflow was started with (its defaults and shard size are in
        no memo): the latest run's input, which carries the first run's settings on."""
        client = await temporal_client(self.temporal)
        handle = client.get_workflow_handle(batch_id)
        try:
            async for event in handle.fetch_history_events(page_size=1):
                attributes = event.workflow_execution_started_event_attributes
                values = await client.data_converter.decode(attributes.input.payloads, [BatchInput])
                found: BatchInput = values[0]
                return found
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise NotFound(f"no batch with id {batch_id!r}") from None
            raise ServiceUnavailable(f"Temporal: {exc}") from exc
        raise NotFound(f"no batch with id {batch_id!r}")

    async def recent(self, limit: int) -> list[BatchView]:
        """The `limit` batches created last, newest first."""
        batches, _ = await self.listing(limit, probe_more=False)
        return batches

    async def listing(
        self,
        limit: int,
        after: str | None = None,
        statuses: frozenset[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        probe_more: bool = True,
    ) -> tuple[list[BatchView], bool]:
        """(batches, has_more): the `limit` newest batches created before the batch `after`
        (all when None) whose status is one of `statuses` and whose metadata holds every
        pair of `metadata`, newest first. `probe_more=False` reads no further than the
        page itself needs (has_more is then always False).

        Temporal's visibility store lists open workflows before closed ones and closed ones
        by close time, so neither order is creation order (a batch still validating from
        an hour ago came above one finished a second ago). Every open batch is read (there
        are few at a time), then closed ones in close-time order until none closing
        earlier can be among the newest: a batch closes after it was created.
        """
        client = await temporal_client(self.temporal)
        bound: tuple[int, float, str] | None = None
        if after is not None:
            bound = await self._cursor(after)
        base = f"WorkflowType = '{BATCH_WORKFLOW}'"
        wanted = limit + 1 if probe_more else limit  # one more tells if a next page exists
        page_size = min(max(wanted, 20), 1000)
        newest: list[tuple[int, float, str]] = []  # min-heap of the `wanted` newest keys
        found: dict[tuple[int, float, str], BatchStatus] = {}

        def matches(batch: BatchStatus) -> bool:
            if statuses is not None and batch.status not in statuses:
                return False
            return all(batch.metadata.get(k) == v for k, v in (metadata or {}).items())

        async def add(execution: WorkflowExecution) -> None:
            batch = batch_status(
                execution.id, execution.status, await execution.memo(), execution.close_time
            )
            started = execution.start_time.timestamp() if execution.start_time else 0.0
            key = (batch.created_at or int(started), started, execution.id)
            if bound is not None and key >= bound:
                return
            if key in found:  # listed twice: it closed between the two listings
                if matches(batch):
                    found[key] = batch
                else:  # closed into a status the filter leaves out
                    del found[key]
                    newest.remove(key)
                    heapq.heapify(newest)
                return
            if not matches(batch):
                return
            found[key] = batch
            heapq.heappush(newest, key)
            if len(newest) > wanted:
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
            if len(newest) >= wanted and closed < newest[0][0]:
                break  # this and every later one was created before the oldest kept
            await add(execution)
        now = time.time()
        keys = sorted(found, reverse=True)
        return [BatchView.of(found[key], now) for key in keys[:limit]], len(keys) > limit

    async def _cursor(self, after: str) -> tuple[int, float, str]:
        """The listing's sort key of the batch `after`: the next page starts below it."""
        try:
            _, description = await self._describe(after)
        except NotFound:
            raise InvalidRequest(f"after: no batch with id {after!r}", param="after") from None
        memo = await description.memo()
        started = description.start_time.timestamp() if description.start_time else 0.0
        created = memo.get("created_at")
        return (int(created) if created else int(started), started, after)

    async def page(self, limit: int, after: str | None = None) -> tuple[list[BatchView], bool]:
        """(batches, has_more): newest first (by creation, as `listing` orders them, not in
        the visibility store's open-then-closed order), starting after the batch `after`."""
        return await self.listing(limit, after)

    async def cancel(self, batch_id: str) -> BatchView:
        handle, description = await self._describe(batch_id)
        current = await self._read(description, batch_id)
        if is_final(current.status):
            raise Conflict(f"batch {batch_id} is already {current.status}")
        await handle.cancel()
        logger.info("batch %s: cancel requested", batch_id)
        now = time.time()
        return BatchView.of(as_cancelling(current, now), now)

    # Results ---------------------------------------------------------------------------

    def _stream_partial(self, batch: BatchView, successes: bool) -> Iterator[bytes]:
        """Lines of the shards finished so far, in shard order."""
        results = ShardResults(self.s3, self.bucket, batch.id)
        for success, line in results.lines(batch.shard_count):
            if success == successes:
                yield line + b"\n"

    async def results(self, batch_id: str, errors: bool) -> tuple[BatchView, Iterator[bytes], bool]:
        """(batch, byte iterator, partial) of the output (or error) lines: the merged file
        once it exists, else the finished shards' lines (partial), never an empty answer
        that claims to be whole (the merge may be waiting for S3, or a failed batch never
        reached it)."""
        batch = await self.get(batch_id)
        try:
            record = await asyncio.to_thread(deleted_kinds, self.s3, self.bucket, batch_id)
        except storage.S3_FAILURES as exc:
            raise ServiceUnavailable(f"S3 is not answering: {exc}") from exc
        gone = deleted_message(batch_id, "errors" if errors else "output", record)
        if gone is not None:
            raise Gone(gone)
        if batch.is_terminal:
            key = errors_key(batch_id) if errors else output_key(batch_id)
            try:
                merged = await asyncio.to_thread(storage.stream_object, self.s3, self.bucket, key)
            except storage.S3_FAILURES as exc:
                if not storage.is_missing(exc):
                    raise ServiceUnavailable(f"S3 is not answering: {exc}") from exc
            else:
                return batch, merged, False
        return batch, self._stream_partial(batch, successes=not errors), True

    # Deletion --------------------------------------------------------------------------

    def _remove_data(self, batch_id: str) -> tuple[int, int]:
        """Records the deletion, then removes every object of the batch but that record:
        (objects, bytes) removed. The record comes first, so the results routes answer 410
        even while (or if a failure stops) the removal; a repeated call removes the rest."""
        record_deleted(self.s3, self.bucket, batch_id, ["batch"])
        objects = size = 0
        keep = deleted_key(batch_id)
        for obj in storage.list_objects(self.s3, self.bucket, batch_objects_prefix(batch_id)):
            if obj.object_name == keep:
                continue
            storage.remove(self.s3, self.bucket, obj.object_name or "")
            objects += 1
            size += obj.size or 0
        return objects, size

    async def delete(self, batch_id: str) -> BatchDeleted:
        """Removes a finished batch's objects (input staged for it, shards, results, output,
        errors, summary; so its OpenAI file views too). A running batch is refused (409).
        Kept: an input it did not stage (an uploaded file, an `input_key` object: the
        user's, perhaps the input of other batches too) and Temporal's history."""
        _, description = await self._describe(batch_id)
        batch = await self._read(description, batch_id)
        if not is_final(batch.status):
            raise Conflict(
                f"batch {batch_id} is {batch.status}: cancel it first "
                f"(POST /batch/{batch_id}/cancel) and delete it once it is cancelled"
            )
        try:
            objects, size = await asyncio.to_thread(self._remove_data, batch_id)
        except storage.S3_FAILURES as exc:
            raise ServiceUnavailable(f"S3 error while deleting: {exc}; retry the delete") from exc
        kept = batch.input_key
        if kept and kept.startswith(batch_objects_prefix(batch_id)):
            kept = None
        logger.info("batch %s: data deleted (%d objects, %d bytes)", batch_id, objects, size)
        return BatchDeleted(
            id=batch_id,
            objects_removed=objects,
            bytes_removed=size,
            input_kept=kept,
            input_file_kept=file_id_for_key(kept) if kept else None,
        )
