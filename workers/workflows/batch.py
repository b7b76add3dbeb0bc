"""The batch workflow: split → run shards through a sliding window → merge.

Progress is published in the workflow's memo, which the API reads with a describe call, so
`GET /batch/{id}` answers even while no worker runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from kernel.inputs import (
        BATCH_WORKFLOW,
        BatchInput,
        BatchProgress,
        BatchResult,
        CapacityInput,
        MergeInput,
        MergeResult,
        ShardInput,
        ShardResult,
        SplitInput,
    )
    from kernel.keys import errors_key, output_key
    from kernel.lifecycle import END_STATE, EndReason, timestamp_field
    from kernel.status import BatchErrors, BatchStatus, RequestCounts
    from kernel.view import batch_cost_usd
    from workers.activities.batch_io import BatchIOActivities
    from workers.activities.capacity import CapacityActivities
    from workers.activities.inference import InferenceActivities

# Split and merge are retried until they succeed: an S3 outage, even a long one at the end
# of a batch, only delays them (an attempt cap would turn an outage into a failed batch with
# every answer already computed). A missing input object is permanent; nothing else they
# raise is (bad lines are error lines, not failures).
IO_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["InputNotFound"],
)
# A shard is retried until it succeeds: its failures are all transient (a killed worker,
# llama-server down); a request that is itself wrong is an error line, not a failure.
SHARD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
IO_TIMEOUT = timedelta(hours=2)
IO_HEARTBEAT = timedelta(seconds=60)
SHARD_TIMEOUT = timedelta(hours=2)
SHARD_HEARTBEAT = timedelta(seconds=15)


# Patched in round4: the budget check sums each box's GPU time at that box's own price (the
# price its shards report) instead of one price for all of the batch's GPU time. Histories of
# earlier releases (no marker) keep the single-price check, so their budget decisions replay
# as they were made.
PER_BOX_COST = "per-box-cost"


class BudgetReached(Exception):
    """The batch's cost would pass its max_cost_usd: it stops as a cancel does."""


class _Expired(Exception):
    """The batch's completion window ran out while shards were left (see `_time_left`)."""


# Patched in round4: a cancel while the split runs ends the batch through the merge (every
# input line a `batch_cancelled` error line), not as a bare cancelled run with total 0. The
# split's cancelled activity raises ActivityError, which Temporal took as the run's cancel.
CANCEL_DURING_SPLIT = "cancel-during-split"

# How often a batch that follows the fleet's capacity re-reads it (also while it waits for
# a shard, so a box that joins mid-batch gets work without waiting for a shard to finish).
CAPACITY_REFRESH = timedelta(seconds=10)
CAPACITY_TIMEOUT = timedelta(seconds=10)
CAPACITY_RETRY = RetryPolicy(maximum_attempts=2)


@workflow.defn(name=BATCH_WORKFLOW)
class BatchWorkflow:
    def __init__(self) -> None:
        self._status = BatchStatus(id="")
        self._capacity = 0
        self._capacity_at: datetime | None = None
        # Whether the input was split into shards (a cancel can come before).
        self._split_done = False

    def _publish(self, **changes: Any) -> None:
        """Updates the status and publishes the changed fields in the memo."""
        self._status = self._status.model_copy(update=changes)
        workflow.upsert_memo(self._status.memo(*changes))

    def _publish_progress(self, progress: BatchProgress) -> None:
        """Counts, tokens, GPU time and requests per box of the shards finished so far."""
        self._publish(
            request_counts=self._counts(progress),
            usage=progress.usage,
            gpu_seconds=round(progress.gpu_seconds, 3),
            boxes=dict(progress.boxes),
            box_costs=progress.box_costs(),
        )

    @staticmethod
    def _counts(progress: BatchProgress) -> RequestCounts:
        return RequestCounts(
            total=progress.total, completed=progress.completed, failed=progress.failed
        )

    @workflow.run
    async def run(self, params: BatchInput) -> BatchResult:
        # Start from what the API (or the previous run) put in the memo, to carry it on.
        memo = {key: workflow.memo_value(key) for key in workflow.memo()}
        self._status = BatchStatus.model_validate({**memo, "id": params.batch_id})
        progress = params.progress or BatchProgress()
        self._split_done = params.progress is not None
        try:
            if params.progress is None:
                progress, first_error = await self._split(params)
                self._split_done = True
                if progress.total - progress.invalid == 0:
                    await self._fail_without_valid_lines(params, progress, first_error)
            self._publish(status="in_progress", request_counts=self._counts(progress))
            if await self._run_shards(params, progress):
                workflow.continue_as_new(
                    replace(params, progress=progress), memo=self._status.memo()
                )
            self._publish(status="finalizing", finalizing_at=self._now())
            return await self._finish(params, progress, "completed")
        except BudgetReached as reached:
            self._publish_cancelling()
            return await self._finish(params, progress, "budget", message=str(reached))
        except _Expired:
            workflow.logger.info("batch %s: completion window over, expiring", params.batch_id)
            return await self._finish(params, progress, "expired")
        except asyncio.CancelledError:
            self._publish_cancelling()
            await self._finish(params, progress, "cancelled")
            raise

    async def _finish(
        self,
        params: BatchInput,
        progress: BatchProgress,
        reason: EndReason,
        message: str = "",
    ) -> BatchResult:
        """Merges what finished into the output and error files (after a cancel, a budget
        stop or an expiry, the shards in flight were stopped first and kept their answers)
        and publishes the final state `reason` gives (kernel.lifecycle) with its timestamp."""
        status = END_STATE[reason]
        merged = await self._merge(params, progress, status, reason)
        if merged.completed + merged.failed != progress.total:
            workflow.logger.warning(
                "batch %s: %d completed + %d failed lines merged, of %d",
                params.batch_id,
                merged.completed,
                merged.failed,
                progress.total,
            )
        changes: dict[str, Any] = {
            "status": status,
            "end_reason": reason,
            timestamp_field(status): self._now(),
            "request_counts": self._merged_counts(progress, merged),
        }
        if message:
            changes["errors"] = BatchErrors(message=message)
        self._publish(**changes)
        return BatchResult(
            batch_id=params.batch_id,
            status=status,
            total=progress.total,
            completed=merged.completed,
            failed=merged.failed,
            output_key=merged.output_key,
            error_key=merged.error_key,
        )

    @staticmethod
    def _time_left(params: BatchInput) -> float | None:
        """Seconds until the batch expires (None when it has no deadline); a durable timer
        in `workflow.wait` wakes the run then, also across worker restarts."""
        if not params.expires_at:
            return None
        return max(0.0, params.expires_at - workflow.now().timestamp())

    @staticmethod
    def _merged_counts(progress: BatchProgress, merged: MergeResult) -> RequestCounts:
        return RequestCounts(total=progress.total, completed=merged.completed, failed=merged.failed)

    async def _fail_without_valid_lines(
        self, params: BatchInput, progress: BatchProgress, first_error: str
    ) -> None:
        await self._merge(params, progress, "failed", "failed")
        first = first_error or "the input is empty"
        message = f"no valid request line in {progress.total} line(s); first problem: {first}"
        self._publish(
            status="failed",
            end_reason="failed",
            errors=BatchErrors(message=message),
            failed_at=self._now(),
            request_counts=RequestCounts(total=progress.total, failed=progress.failed),
        )
        raise ApplicationError(message, type="NoValidLines", non_retryable=True)

    @staticmethod
    def _now() -> int:
        return int(workflow.now().timestamp())

    async def _split(self, params: BatchInput) -> tuple[BatchProgress, str]:
        self._publish(status="validating")
        try:
            split = await workflow.execute_activity_method(
                BatchIOActivities.split_input,
                SplitInput(
                    batch_id=params.batch_id,
                    bucket=params.bucket,
                    input_key=params.input_key,
                    endpoint=params.endpoint,
                    defaults=params.defaults,
                    shard_size=params.shard_size,
                ),
                start_to_close_timeout=IO_TIMEOUT,
                heartbeat_timeout=IO_HEARTBEAT,
                retry_policy=IO_RETRY,
            )
        except ActivityError as exc:
            # Cancelled while splitting: end as any cancel does (`run` merges what the input
            # holds). Histories from before the patch closed the run here.
            if isinstance(exc.cause, CancelledError) and workflow.patched(CANCEL_DURING_SPLIT):
                raise asyncio.CancelledError() from exc
            raise
        if split.first_error:
            self._publish(first_error=split.first_error)
        self._publish(shard_count=split.shard_count, in_progress_at=self._now())
        progress = BatchProgress(
            total=split.total,
            invalid=split.invalid,
            shard_count=split.shard_count,
            failed=split.invalid,
        )
        return progress, split.first_error

    @staticmethod
    def _history_is_long(limit: int) -> bool:
        """Past `limit` events (default 8,000, far below Temporal's 10,240-event warning) a
        run continues as new even if the server has not suggested it yet."""
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= limit

    async def _run_shards(self, params: BatchInput, progress: BatchProgress) -> bool:
        """Runs shards with at most `window` in flight; True when the run should continue
        as new (history long, window drained, shards left)."""
        in_flight: dict[workflow.ActivityHandle[ShardResult], int] = {}
        # One timer per CAPACITY_REFRESH wakes the wait to re-read the capacity (a timer per
        # wait would add two history events to every shard).
        refresh: asyncio.Task[None] | None = None
        try:
            while progress.next_shard < progress.shard_count or in_flight:
                time_left = self._time_left(params)
                if time_left == 0:
                    raise _Expired()
                stop_scheduling = self._history_is_long(params.max_history_events)
                window = await self._window(params) if not stop_scheduling else 0
                while (
                    not stop_scheduling
                    and len(in_flight) < window
                    and progress.next_shard < progress.shard_count
                ):
                    shard = progress.next_shard
                    task = workflow.start_activity_method(
                        InferenceActivities.run_shard,
                        ShardInput(batch_id=params.batch_id, bucket=params.bucket, shard=shard),
                        task_queue=params.gpu_task_queue,
                        start_to_close_timeout=SHARD_TIMEOUT,
                        heartbeat_timeout=SHARD_HEARTBEAT,
                        retry_policy=SHARD_RETRY,
                        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                        summary=f"shard {shard}",
                    )
                    in_flight[task] = shard
                    progress.next_shard += 1
                if not in_flight:
                    return True
                waiters: list[asyncio.Future[Any]] = list(in_flight)
                if params.follow_capacity and progress.next_shard < progress.shard_count:
                    if refresh is None or refresh.done():
                        refresh = asyncio.create_task(workflow.sleep(CAPACITY_REFRESH))
                    waiters.append(refresh)
                done, _ = await workflow.wait(
                    waiters, timeout=time_left, return_when=asyncio.FIRST_COMPLETED
                )
                finished = [task for task in in_flight if task in done]
                if not finished:
                    continue
                for task in finished:
                    del in_flight[task]
                    progress.add(task.result())
                self._publish_progress(progress)
                over_budget = self._over_budget(params, progress, len(in_flight))
                if over_budget:
                    await self._cancel_shards(in_flight, progress)
                    raise BudgetReached(over_budget)
        except asyncio.CancelledError:
            await self._cancel_shards(in_flight, progress)
            raise
        except _Expired:
            await self._cancel_shards(in_flight, progress, announce=False)
            raise
        finally:
            if refresh is not None and not refresh.done():
                refresh.cancel()
        return False

    def _publish_cancelling(self) -> None:
        if self._status.status != "cancelling":
            self._publish(status="cancelling", cancelling_at=self._now())

    async def _cancel_shards(
        self,
        in_flight: dict[workflow.ActivityHandle[ShardResult], int],
        progress: BatchProgress,
        announce: bool = True,
    ) -> None:
        """Shows `cancelling` at once (unless `announce` is off: an expiry is no cancel),
        then cancels the running shards and waits for them: each keeps the lines it
        answered as its result (see run_shard) and completes, so its counts join the
        batch's."""
        if announce:
            self._publish_cancelling()
        for task in in_flight:
            task.cancel()
        if not in_flight:
            return
        await workflow.wait(list(in_flight))
        for task in in_flight:
            if not task.cancelled() and task.exception() is None:
                progress.add(task.result())
        self._publish_progress(progress)

    def _over_budget(self, params: BatchInput, progress: BatchProgress, running: int) -> str:
        """A message when one more shard at the average cost so far would pass the budget.
        The cost is summed over the boxes the batch used, each at its own price."""
        if params.max_cost_usd is None or not params.gpu_price_per_hour:
            return ""
        started = self._status.in_progress_at or self._now()
        per_box = progress.box_costs() if workflow.patched(PER_BOX_COST) else None
        cost = batch_cost_usd(
            params.gpu_price_per_hour,
            progress.gpu_seconds,
            float(self._now() - started),
            len(progress.boxes),
            per_box,
        )
        finished = progress.next_shard - running
        if cost is None or not finished:
            return ""
        if cost + cost / finished <= params.max_cost_usd:
            return ""
        return (
            f"budget reached: the batch cost ${cost:.4f} of its max_cost_usd "
            f"${params.max_cost_usd:g}; stopped as a cancel does, finished results kept"
        )

    async def _window(self, params: BatchInput) -> int:
        """Shards to keep in flight: the fleet's live capacity (the sum over live GPU boxes of
        what keeps each busy), `params.window` being the floor and the fallback when no box
        has reported."""
        if not params.follow_capacity:
            return params.window
        now = workflow.now()
        if self._capacity_at is None or now - self._capacity_at >= CAPACITY_REFRESH:
            self._capacity_at = now
            try:
                capacity = await workflow.execute_local_activity_method(
                    CapacityActivities.live_capacity,
                    CapacityInput(
                        bucket=params.bucket,
                        gpu_task_queue=params.gpu_task_queue,
                        shard_size=params.shard_size,
                    ),
                    start_to_close_timeout=CAPACITY_TIMEOUT,
                    retry_policy=CAPACITY_RETRY,
                )
            except ActivityError as exc:  # S3 trouble: keep the last known capacity
                workflow.logger.warning("batch %s: capacity unknown: %s", params.batch_id, exc)
            else:
                if capacity.shards != self._capacity:
                    workflow.logger.info(
                        "batch %s: %d live box(es), %d slot(s): %d shard(s) in flight",
                        params.batch_id,
                        capacity.boxes,
                        capacity.slots,
                        max(params.window, capacity.shards),
                    )
                self._capacity = capacity.shards
        return max(params.window, self._capacity)

    async def _merge(
        self, params: BatchInput, progress: BatchProgress, status: str, reason: EndReason
    ) -> MergeResult:
        """Writes the output and error files; the requests that never ran (a cancel, the
        budget, an expiry) become error lines there, so the counts add up to the total."""
        merged: MergeResult = await workflow.execute_activity_method(
            BatchIOActivities.merge_results,
            MergeInput(
                batch_id=params.batch_id,
                bucket=params.bucket,
                shard_count=progress.shard_count,
                status=status,
                total=progress.total,
                created_at=params.created_at,
                end_reason=reason,
                unsplit_input_key="" if self._split_done else params.input_key,
            ),
            start_to_close_timeout=IO_TIMEOUT,
            heartbeat_timeout=IO_HEARTBEAT,
            retry_policy=IO_RETRY,
        )
        if merged.total and not progress.total:  # ended before the split: the merge counted
            progress.total = merged.total
        self._publish(output_key=output_key(params.batch_id), error_key=errors_key(params.batch_id))
        return merged
