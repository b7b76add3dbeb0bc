"""A batch with a budget stops as a cancel does once its cost would pass max_cost_usd: the
batch workflow on a real Temporal dev server, its activities replaced under their names."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from app.services.batches import batch_status
from harness.batch_doubles import SHARD_ITEMS, BatchActivityDoubles, dev_server_env
from kernel.inputs import ShardResult
from tests.integration.test_batch_workflow import run_batch, worker

# Each fake shard held a box for 36 s: at $1 an hour that is one cent a shard.
SHARD_GPU_SECONDS = 36.0


class PricedShards(BatchActivityDoubles):
    def shard_result(self, shard: int) -> ShardResult:
        return ShardResult(
            shard=shard,
            completed=SHARD_ITEMS,
            failed=0,
            output_tokens=100,
            gpu_seconds=SHARD_GPU_SECONDS,
        )


env = pytest.fixture(scope="module", name="env")(dev_server_env)


async def test_budget_stops_the_batch_as_a_cancel_keeping_results(
    env: WorkflowEnvironment,
) -> None:
    fakes = PricedShards(shards=40, shard_delay=0.02)
    queue, batch_id, result = await run_batch(
        env, fakes, window=1, gpu_price_per_hour=1.0, max_cost_usd=0.05
    )
    async with worker(env, queue, fakes):
        outcome = await result
    assert outcome.status == "cancelled"
    # One more shard at a cent would pass five cents: it stops after the fifth.
    assert sorted(fakes.shard_runs) == list(range(5))
    assert [m.status for m in fakes.merges] == ["cancelled"]
    assert [m.end_reason for m in fakes.merges] == ["budget"]

    description = await env.client.get_workflow_handle(batch_id).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    batch = batch_status(batch_id, description.status, await description.memo())
    assert batch.status == "cancelled"
    assert batch.errors is not None and batch.errors.message.startswith("budget reached")
    assert "max_cost_usd $0.05" in batch.errors.message
    assert batch.gpu_seconds == pytest.approx(5 * SHARD_GPU_SECONDS)


async def test_without_a_budget_a_priced_batch_runs_to_the_end(env: WorkflowEnvironment) -> None:
    fakes = PricedShards(shards=8)
    queue, batch_id, result = await run_batch(env, fakes, window=2, gpu_price_per_hour=1.0)
    async with worker(env, queue, fakes):
        outcome = await result
    assert outcome.status == "completed"
    assert sorted(fakes.shard_runs) == list(range(8))
