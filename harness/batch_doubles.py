"""The workflows' activities replaced under their real names, for the tests and the replay
recorder that run the real workflow code on a private Temporal dev server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from temporalio import activity
from temporalio.testing import WorkflowEnvironment

from kernel.inputs import (
    CapacityInput,
    CapacityResult,
    MergeInput,
    MergeResult,
    ProcessInput,
    ProcessResult,
    ShardInput,
    ShardResult,
    SplitInput,
    SplitResult,
)

VENV_BIN = Path(sys.executable).parent
SHARD_ITEMS = 10


async def start_dev_server() -> WorkflowEnvironment:
    """A private Temporal dev server from the virtualenv's `temporal` (no download)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(VENV_BIN / "temporal"),
        dev_server_extra_args=["--dynamic-config-value", "frontend.enableServerVersionCheck=false"],
    )


async def dev_server_env() -> AsyncIterator[WorkflowEnvironment]:
    """A test module's `env` fixture: `env = pytest.fixture(scope="module")(dev_server_env)`."""
    environment = await start_dev_server()
    try:
        yield environment
    finally:
        await environment.shutdown()


class BatchActivityDoubles:
    """`shards` shards of SHARD_ITEMS lines, each answering all but one (`shard_result`,
    which subclasses change), plus `invalid` input lines; records what ran."""

    def __init__(self, shards: int, invalid: int = 0, shard_delay: float = 0.0) -> None:
        self.shards = shards
        self.invalid = invalid
        self.shard_delay = shard_delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.shard_runs: list[int] = []
        self.merges: list[MergeInput] = []

    def shard_result(self, shard: int) -> ShardResult:
        return ShardResult(shard=shard, completed=SHARD_ITEMS - 1, failed=1)

    @activity.defn(name="split_input")
    async def split_input(self, params: SplitInput) -> SplitResult:
        total = self.shards * SHARD_ITEMS + self.invalid
        return SplitResult(
            total=total,
            valid=total - self.invalid,
            invalid=self.invalid,
            shard_count=self.shards,
            first_error="line 1: missing 'custom_id'" if self.invalid else "",
        )

    @activity.defn(name="run_shard")
    async def run_shard(self, params: ShardInput) -> ShardResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.shard_delay)
            self.shard_runs.append(params.shard)
            return self.shard_result(params.shard)
        finally:
            self.in_flight -= 1

    @activity.defn(name="merge_results")
    async def merge_results(self, params: MergeInput) -> MergeResult:
        self.merges.append(params)
        done = len(self.shard_runs)
        return MergeResult(
            completed=done * (SHARD_ITEMS - 1),
            failed=done + self.invalid,
            output_key=f"batches/{params.batch_id}/output.jsonl",
            error_key=f"batches/{params.batch_id}/errors.jsonl",
        )

    @activity.defn(name="live_capacity")
    async def live_capacity(self, params: CapacityInput) -> CapacityResult:
        return CapacityResult(shards=3, boxes=1, slots=4)

    @activity.defn(name="process_request")
    async def process_request(self, params: ProcessInput) -> ProcessResult:
        return ProcessResult(output={"custom_id": params.request["custom_id"], "error": None})

    def batch(self) -> list[Callable[..., Awaitable[object]]]:
        """The batch workflow's activities."""
        return [self.split_input, self.run_shard, self.merge_results]

    def all(self) -> list[Callable[..., Awaitable[object]]]:
        return [*self.batch(), self.live_capacity, self.process_request]


class ReportingBatchDoubles(BatchActivityDoubles):
    """Shards that also report tokens, GPU time and a box, as real ones do."""

    def shard_result(self, shard: int) -> ShardResult:
        return ShardResult(
            shard=shard,
            completed=SHARD_ITEMS - 1,
            failed=1,
            input_tokens=7,
            output_tokens=5,
            gpu_seconds=0.01,
            box="replay",
        )
