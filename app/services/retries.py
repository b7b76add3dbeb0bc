"""Retries: a new batch from an ended batch's failed and/or unfinished lines, linked both
ways; and a chain of retries read as one (`?merged=true`). The selection and the merge are
kernel.retry's; this reads and writes the bucket and starts the batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator

from app.core.errors import Conflict, Gone, InvalidRequest, NotFound, ServiceUnavailable
from app.services.batches import BatchService, new_batch_id
from app.services.deleted import deleted_kinds, deleted_message
from kernel import storage
from kernel.endpoints import MAX_LINE_BYTES
from kernel.inputs import BatchInput
from kernel.jsonl import iter_lines
from kernel.keys import errors_key, input_key, invalid_lines_key, output_key, shard_key
from kernel.results import ShardResults
from kernel.retry import (
    INVALID_CODE,
    RETRYABLE_ENDINGS,
    LineSource,
    RetryCounts,
    chain_order,
    merged_errors,
    merged_results,
    select_shard,
    select_unsplit,
)
from kernel.view import BatchView

logger = logging.getLogger(__name__)

# A chain longer than this is not followed further (a guard, not a limit anyone reaches).
MAX_CHAIN = 1000
METADATA_KEY = "retry_of"
MAX_METADATA_PAIRS = 16


def _nothing_message(batch_id: str, counts: RetryCounts, failed: bool, unfinished: bool) -> str:
    asked = " or ".join(k for k, on in (("failed", failed), ("unfinished", unfinished)) if on)
    parts = [f"batch {batch_id} has no {asked} line to retry"]
    invalid = counts.left_out.get(INVALID_CODE, 0)
    if invalid:
        parts.append(f"{invalid} invalid input line(s) are not resent: they would fail again")
    for kind in ("failed", "unfinished"):
        if counts.left_out.get(kind):
            parts.append(f"{counts.left_out[kind]} {kind} line(s) not asked for")
    return "; ".join(parts)


class RetryService:
    def __init__(self, batches: BatchService) -> None:
        self.batches = batches
        self.s3 = batches.s3
        self.bucket = batches.bucket

    # Retry -----------------------------------------------------------------------------

    async def _check_not_deleted(self, batch_id: str) -> None:
        try:
            record = await asyncio.to_thread(deleted_kinds, self.s3, self.bucket, batch_id)
        except storage.S3_FAILURES as exc:
            raise ServiceUnavailable(f"S3 is not answering: {exc}") from exc
        if "batch" in record:
            raise Gone(deleted_message(batch_id, "output", record) or f"batch {batch_id} deleted")

    async def retry(
        self, batch_id: str, *, failed: bool = True, unfinished: bool = True
    ) -> tuple[BatchView, RetryCounts]:
        """Starts a batch of `batch_id`'s failed and/or unfinished lines with its settings:
        (the new batch, what was selected and left out). 409 while the batch runs or when
        nothing is left to retry; 410 when its data was deleted."""
        if not failed and not unfinished:
            raise InvalidRequest("failed and unfinished are both false: nothing to select")
        batch = await self.batches.get(batch_id)
        if not batch.is_terminal:
            raise Conflict(
                f"batch {batch_id} is {batch.status}: a batch is retried once it has ended "
                f"(wait for it, or POST /batch/{batch_id}/cancel)"
            )
        await self._check_not_deleted(batch_id)
        params = await self.batches.start_input(batch_id)
        retry_id = new_batch_id()
        try:
            counts = await asyncio.to_thread(
                self._stage, batch, params, retry_id, failed, unfinished
            )
        except storage.S3_FAILURES as exc:
            raise ServiceUnavailable(f"S3 error while reading the batch: {exc}") from exc
        if not counts.selected:
            raise Conflict(_nothing_message(batch_id, counts, failed, unfinished))
        metadata = dict(batch.metadata)
        if METADATA_KEY in metadata or len(metadata) < MAX_METADATA_PAIRS:
            metadata[METADATA_KEY] = batch_id
        try:
            view = await self.batches.submit(
                items=None,
                input_object=input_key(retry_id),
                endpoint=batch.endpoint,
                defaults=params.defaults,
                metadata=metadata,
                shard_size=params.shard_size,
                max_cost_usd=batch.max_cost_usd,
                completion_window=batch.completion_window,
                batch_id=retry_id,
                retry_of=batch_id,
            )
        except Exception:
            await asyncio.to_thread(self._unstage, retry_id)
            raise
        try:
            await asyncio.to_thread(
                self.batches.link_retry, batch_id, retry_id, view.created_at or 0
            )
        except storage.S3_FAILURES as exc:  # the retry runs; only the link back is missing
            logger.warning("batch %s: retry %s not linked back: %s", batch_id, retry_id, exc)
        logger.info(
            "batch %s: retried as %s (%d failed, %d unfinished line(s); left out %s)",
            batch_id,
            retry_id,
            counts.failed,
            counts.unfinished,
            counts.left_out or "none",
        )
        return view, counts

    def _unstage(self, retry_id: str) -> None:
        try:
            storage.remove(self.s3, self.bucket, input_key(retry_id))
        except storage.S3_FAILURES as exc:
            logger.warning("could not remove the staged retry input of %s: %s", retry_id, exc)

    def _stage(
        self, batch: BatchView, params: BatchInput, retry_id: str, failed: bool, unfinished: bool
    ) -> RetryCounts:
        """Writes the selected request lines as the retry's input (nothing when none is
        selected); streams every object it reads, one shard's custom_ids in memory."""
        counts = RetryCounts()
        with storage.JsonlSpool(self.s3, self.bucket) as spool:
            for request in self._select(batch, params, failed, unfinished, counts):
                spool.write_json(request)
            if counts.selected:
                spool.upload(input_key(retry_id))
        return counts

    def _select(
        self,
        batch: BatchView,
        params: BatchInput,
        failed: bool,
        unfinished: bool,
        counts: RetryCounts,
    ) -> Iterator[dict[str, object]]:
        invalid = sum(
            1
            for _ in storage.read_lines(
                self.s3, self.bucket, invalid_lines_key(batch.id), missing_ok=True
            )
        )
        counts.leave_out(INVALID_CODE, invalid)
        stopped_early = batch.end_reason in RETRYABLE_ENDINGS
        if not batch.shard_count:
            # Ended before the split (cancelled while validating): every parsable input line
            # never ran.
            if not stopped_early or not batch.input_key:
                return
            try:
                chunks = storage.stream_object(self.s3, self.bucket, batch.input_key)
            except storage.S3_FAILURES as exc:
                if storage.is_missing(exc):
                    return
                raise
            with chunks:
                yield from select_unsplit(
                    iter_lines(chunks, MAX_LINE_BYTES),
                    batch.endpoint,
                    params.defaults,
                    unfinished=unfinished,
                    counts=counts,
                )
            return
        results = ShardResults(self.s3, self.bucket, batch.id).result_keys()
        for shard in range(batch.shard_count):
            answers: Iterable[bytes] = ()
            if shard in results:
                answers = storage.read_lines(self.s3, self.bucket, results[shard], missing_ok=True)
            yield from select_shard(
                storage.read_lines(self.s3, self.bucket, shard_key(batch.id, shard)),
                answers,
                ran_all=not stopped_early,
                failed=failed,
                unfinished=unfinished,
                counts=counts,
            )

    # The chain -------------------------------------------------------------------------

    async def chain(self, batch_id: str) -> list[BatchView]:
        """Every batch of `batch_id`'s chain (the batches it retries, back to the first, and
        every batch retrying any of them), newest first."""
        start = await self.batches.get(batch_id)
        found = {start.id: start}
        current = start
        while current.retry_of and current.retry_of not in found and len(found) < MAX_CHAIN:
            try:
                current = await self.batches.get(current.retry_of)
            except NotFound:
                break
            found[current.id] = current
        pending = list(found.values())
        while pending and len(found) < MAX_CHAIN:
            for retry_id in pending.pop().retried_by:
                if retry_id in found:
                    continue
                try:
                    found[retry_id] = await self.batches.get(retry_id)
                except NotFound:
                    continue
                pending.append(found[retry_id])
        order = chain_order((b.id, b.created_at) for b in found.values())
        return [found[bid] for bid in order]

    def _lines(self, batch: BatchView, errors: bool) -> LineSource:
        """The batch's output (or error) lines, opened when the merge reaches them: the merged
        file once it exists, else the finished shards' lines."""

        def lines() -> Iterator[bytes]:
            if batch.is_terminal:
                key = errors_key(batch.id) if errors else output_key(batch.id)
                try:
                    merged = storage.read_lines(self.s3, self.bucket, key)
                except storage.S3_FAILURES as exc:
                    if not storage.is_missing(exc):
                        raise
                else:
                    yield from merged
                    return
            results = ShardResults(self.s3, self.bucket, batch.id)
            for success, line in results.lines(batch.shard_count):
                if success != errors:
                    yield line

        return lines

    async def merged(
        self, batch_id: str, errors: bool
    ) -> tuple[BatchView, list[BatchView], Iterator[bytes], bool]:
        """(batch, chain newest first, lines, partial): one output (or error) line per
        custom_id across `batch_id`'s chain, the newest batch's answer winning (see
        kernel.retry). Batches whose data was deleted are skipped; `batch_id`'s own is 410."""
        chain = await self.chain(batch_id)
        live = []
        for batch in chain:
            try:
                record = await asyncio.to_thread(deleted_kinds, self.s3, self.bucket, batch.id)
            except storage.S3_FAILURES as exc:
                raise ServiceUnavailable(f"S3 is not answering: {exc}") from exc
            gone = deleted_message(batch.id, "errors" if errors else "output", record)
            if gone is not None and batch.id == batch_id:
                raise Gone(gone)
            outputs_gone = deleted_message(batch.id, "output", record) is not None
            live.append((batch, gone is None, not outputs_gone))
        requested = next(b for b in chain if b.id == batch_id)
        partial = any(not batch.is_terminal for batch in chain)
        outputs = [self._lines(b, errors=False) for b, _, has_output in live if has_output]
        if errors:
            error_sources = [self._lines(b, errors=True) for b, kept, _ in live if kept]
            lines = merged_errors(outputs, error_sources)
        else:
            lines = merged_results(outputs)
        return requested, chain, lines, partial
