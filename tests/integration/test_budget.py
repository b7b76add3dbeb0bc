"""A batch with a budget stops as a cancel does once its cost would pass max_cost_usd: the
batch workflow on a real Temporal dev server, its activities replaced under their names."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from app.services.batches import batch_status
from harness.batch_doubles import SHARD_ITEMS, BatchActivityDoubles, dev_server_env
from kernel.inputs import ShardResult
from kernel.status import BatchErrors
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


class TwoPricedBoxes(BatchActivityDoubles):
    """Shards alternate between a $3,600/h box (even shards) and a $36,000/h one (odd),
    each holding its box 0.1 s: 10 cents a shard on box-a, a dollar on box-b."""

    def shard_result(self, shard: int) -> ShardResult:
        box, price = ("box-a", 3_600.0) if shard % 2 == 0 else ("box-b", 36_000.0)
        return ShardResult(
            shard=shard,
            completed=SHARD_ITEMS,
            failed=0,
            gpu_seconds=0.1,
            box=box,
            price_per_hour=price,
        )


async def test_budget_is_the_sum_over_boxes_at_each_box_price(env: WorkflowEnvironment) -> None:
    fakes = TwoPricedBoxes(shards=40, shard_delay=0.05)
    # The batch's own price ($3,600/h) alone would allow 19 shards within $2.
    queue, batch_id, result = await run_batch(
        env, fakes, window=1, gpu_price_per_hour=3_600.0, max_cost_usd=2.0
    )
    async with worker(env, queue, fakes):
        outcome = await result
    assert outcome.status == "cancelled"
    # $0.10 + $1 + $0.10 = $1.20 (+ $0.40 average: within $2); with shard 3's dollar, $2.20.
    assert sorted(fakes.shard_runs) == list(range(4))
    description = await env.client.get_workflow_handle(batch_id).describe()
    batch = batch_status(batch_id, description.status, await description.memo())
    assert batch.end_reason == "budget"
    assert (
        "the batch cost $2.2000 of its max_cost_usd $2"
        in (batch.errors or BatchErrors(message="")).message
    )
    assert {
        name: (box.gpu_seconds, box.price_per_hour) for name, box in batch.box_costs.items()
    } == {
        "box-a": (0.2, 3_600.0),
        "box-b": (0.2, 36_000.0),
    }
