"""The batch workflow on a real Temporal dev server, its activities replaced under their
real names: the window, continue-as-new, failure without valid lines, cancellation."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from harness.batch_doubles import SHARD_ITEMS, BatchActivityDoubles, dev_server_env
from kernel.inputs import BatchInput, BatchResult, ShardInput, ShardResult
from workers.workflows.batch import BatchWorkflow

env = pytest.fixture(scope="module", name="env")(dev_server_env)


async def run_batch(
    env: WorkflowEnvironment, fakes: BatchActivityDoubles, **overrides: object
) -> tuple[str, str, asyncio.Task[BatchResult]]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    batch_id = f"batch_{uuid.uuid4().hex}"
    params = BatchInput(
        batch_id=batch_id,
        bucket="b",
        input_key="in",
        gpu_task_queue=queue,
        metadata={"project": "unit"},
        **overrides,  # type: ignore[arg-type]
    )
    handle = await env.client.start_workflow(
        BatchWorkflow.run,
        params,
        id=batch_id,
        task_queue=queue,
        memo={"created_at": 123, "metadata": {"project": "unit"}},
    )
    return queue, batch_id, asyncio.ensure_future(handle.result())


def worker(env: WorkflowEnvironment, queue: str, fakes: BatchActivityDoubles) -> Worker:
    return Worker(
        env.client,
        task_queue=queue,
        workflows=[BatchWorkflow],
        activities=fakes.batch(),
        activity_executor=ThreadPoolExecutor(4),
    )


async def test_shards_run_once_each_within_the_window(env: WorkflowEnvironment) -> None:
    fakes = BatchActivityDoubles(shards=12, shard_delay=0.05)
    queue, batch_id, result = await run_batch(env, fakes, window=3)
    async with worker(env, queue, fakes):
        outcome = await result
    assert sorted(fakes.shard_runs) == list(range(12))
    assert fakes.max_in_flight == 3
    assert outcome.completed == 12 * (SHARD_ITEMS - 1)
    assert [m.status for m in fakes.merges] == ["completed"]
    assert [m.end_reason for m in fakes.merges] == ["completed"]
    memo = await (await env.client.get_workflow_handle(batch_id).describe()).memo()
    assert memo["status"] == "completed"
    assert memo["request_counts"] == {"total": 120, "completed": 108, "failed": 12}


async def test_long_histories_continue_as_new_and_keep_the_memo(env: WorkflowEnvironment) -> None:
    fakes = BatchActivityDoubles(shards=30)
    queue, batch_id, result = await run_batch(env, fakes, window=4, max_history_events=60)
    async with worker(env, queue, fakes):
        outcome = await result
    assert sorted(fakes.shard_runs) == list(range(30)), "every shard exactly once"
    assert outcome.total == 300
    runs = [
        execution async for execution in env.client.list_workflows(f"WorkflowId = '{batch_id}'")
    ]
    assert len(runs) >= 2
    assert sum(r.status == WorkflowExecutionStatus.CONTINUED_AS_NEW for r in runs) == len(runs) - 1
    latest = await env.client.get_workflow_handle(batch_id).describe()
    memo = await latest.memo()
    assert memo["created_at"] == 123 and memo["metadata"] == {"project": "unit"}
    assert memo["status"] == "completed"


async def test_no_valid_line_fails_with_the_first_problem(env: WorkflowEnvironment) -> None:
    fakes = BatchActivityDoubles(shards=0, invalid=3)
    queue, _, result = await run_batch(env, fakes)
    async with worker(env, queue, fakes):
        with pytest.raises(WorkflowFailureError) as failure:
            await result
    message = str(failure.value.cause)
    assert "no valid request line in 3 line(s)" in message
    assert "line 1: missing 'custom_id'" in message


async def test_cancel_merges_what_finished(env: WorkflowEnvironment) -> None:
    fakes = BatchActivityDoubles(shards=50, shard_delay=0.2)
    queue, batch_id, result = await run_batch(env, fakes, window=2)
    async with worker(env, queue, fakes):
        while len(fakes.shard_runs) < 2:
            await asyncio.sleep(0.05)
        await env.client.get_workflow_handle(batch_id).cancel()
        with pytest.raises(WorkflowFailureError):
            await result
    description = await env.client.get_workflow_handle(batch_id).describe()
    assert description.status == WorkflowExecutionStatus.CANCELED
    assert [m.status for m in fakes.merges] == ["cancelled"]
    assert [m.end_reason for m in fakes.merges] == ["cancelled"]
    memo = await description.memo()
    assert memo["status"] == "cancelled"
    assert len(fakes.shard_runs) < 50


class SlowToCancelShards(BatchActivityDoubles):
    """Shards that run until cancelled, then take until `release` to stop, and complete
    with the lines they answered (as run_shard does), 3 each."""

    def __init__(self, shards: int) -> None:
        super().__init__(shards)
        self.started = 0
        self.release = asyncio.Event()

    @activity.defn(name="run_shard")
    async def run_shard(self, params: ShardInput) -> ShardResult:
        self.started += 1
        try:
            while True:
                activity.heartbeat()
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            await self.release.wait()
            self.shard_runs.append(params.shard)
            return ShardResult(
                shard=params.shard, completed=3, failed=0, input_tokens=5, box="test-box"
            )


async def test_cancel_shows_before_the_shards_stop_and_counts_their_answers(
    env: WorkflowEnvironment,
) -> None:
    fakes = SlowToCancelShards(shards=10)
    queue, batch_id, result = await run_batch(env, fakes, window=2)
    handle = env.client.get_workflow_handle(batch_id)
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[BatchWorkflow],
        activities=fakes.batch(),
        max_heartbeat_throttle_interval=timedelta(milliseconds=100),
    ):
        while fakes.started < 2:
            await asyncio.sleep(0.05)
        await handle.cancel()
        try:
            async with asyncio.timeout(60):  # before the fix, only once the shards stopped
                while (memo := await (await handle.describe()).memo())["status"] != "cancelling":
                    await asyncio.sleep(0.05)
            assert memo["cancelling_at"] is not None
            assert fakes.shard_runs == [], "cancelling shows while the shards still stop"
        finally:
            fakes.release.set()
        with pytest.raises(WorkflowFailureError):
            await result
    memo = await (await handle.describe()).memo()
    assert memo["status"] == "cancelled"
    assert sorted(fakes.shard_runs) == [0, 1]
    assert memo["usage"]["input_tokens"] == 10, "the stopped shards' answers count"
    assert memo["boxes"] == {"test-box": 6}
    assert [m.status for m in fakes.merges] == ["cancelled"]
    assert [m.end_reason for m in fakes.merges] == ["cancelled"]
