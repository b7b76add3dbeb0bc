"""run_shard on its own (ActivityEnvironment): what a cancel keeps, and what it does not."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.testing import ActivityEnvironment

from kernel.contract import ShardInput, ShardResult, result_key, shard_key
from workers.activities.inference import InferenceActivities
from workers.llama import output_line

BATCH = "batch_unit"


class Stored:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def stream(self, amount: int) -> Iterator[bytes]:
        for start in range(0, len(self.payload), 7):  # small chunks: lines split across them
            yield self.payload[start : start + 7]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeS3:
    """Objects in a dict; `put_object` fails `failures` times first."""

    def __init__(self, failures: int = 0) -> None:
        self.objects: dict[str, bytes] = {}
        self.failures = failures

    def get_object(self, bucket: str, key: str) -> Stored:
        return Stored(self.objects[key])

    def put_object(self, bucket: str, key: str, data: io.BufferedIOBase, length: int, **_: Any):
        if self.failures:
            self.failures -= 1
            raise OSError("S3 is away")
        self.objects[key] = data.read(length)

    def list_objects(self, bucket: str, prefix: str = "", recursive: bool = False) -> Any:
        return [
            SimpleNamespace(object_name=k) for k in sorted(self.objects) if k.startswith(prefix)
        ]


class FakeLlama:
    """Answers the requests whose custom_id is in `quick` at once; the others never."""

    def __init__(self, quick: set[str]) -> None:
        self.quick = quick
        self.answered = 0

    async def run(self, custom_id: str, url: str, body: dict[str, Any], urgent: bool = False):
        if custom_id not in self.quick:
            await asyncio.Event().wait()
        self.answered += 1
        return output_line(custom_id, 200, {"usage": {"prompt_tokens": 2}}, "req_x", None)


def shard_of(count: int) -> bytes:
    lines = [
        {"line": i + 1, "custom_id": f"r{i}", "url": "/v1/completions", "body": {"prompt": "x"}}
        for i in range(count)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def result_ids(s3: FakeS3) -> list[str]:
    payload = s3.objects[result_key(BATCH, 0)]
    return [json.loads(line)["custom_id"] for line in payload.splitlines()]


async def run_until_answered(
    env: ActivityEnvironment, activities: InferenceActivities, llama: FakeLlama, answered: int
) -> asyncio.Task[ShardResult]:
    task = asyncio.create_task(
        env.run(activities.run_shard, ShardInput(batch_id=BATCH, bucket="b", shard=0))
    )
    async with asyncio.timeout(10):
        while llama.answered < answered:
            await asyncio.sleep(0.01)
    return task


@pytest.fixture
def s3() -> FakeS3:
    store = FakeS3()
    store.objects[shard_key(BATCH, 0)] = shard_of(10)
    return store


async def test_a_shard_runs_whole_and_writes_its_lines_in_order(s3: FakeS3) -> None:
    llama = FakeLlama({f"r{i}" for i in range(10)})
    result = await ActivityEnvironment().run(
        InferenceActivities(s3, llama, "box").run_shard,  # type: ignore[arg-type]
        ShardInput(batch_id=BATCH, bucket="b", shard=0),
    )
    assert (result.completed, result.failed, result.input_tokens) == (10, 0, 20)
    assert result_ids(s3) == [f"r{i}" for i in range(10)]


async def test_a_cancelled_batch_keeps_what_the_shard_answered(s3: FakeS3) -> None:
    llama = FakeLlama({"r1", "r4", "r7"})
    env = ActivityEnvironment()
    activities = InferenceActivities(s3, llama, "box")  # type: ignore[arg-type]
    task = await run_until_answered(env, activities, llama, 3)
    env.cancel(ActivityCancellationDetails(cancel_requested=True))
    result = await task
    assert (result.completed, result.failed, result.box) == (3, 0, "box")
    assert result_ids(s3) == ["r1", "r4", "r7"]


async def test_a_worker_shutdown_keeps_nothing_so_the_shard_runs_again(s3: FakeS3) -> None:
    llama = FakeLlama({"r1", "r4"})
    env = ActivityEnvironment()
    activities = InferenceActivities(s3, llama, "box")  # type: ignore[arg-type]
    task = await run_until_answered(env, activities, llama, 2)
    env.cancel(ActivityCancellationDetails(cancel_requested=True, worker_shutdown=True))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert result_key(BATCH, 0) not in s3.objects


async def test_writing_the_result_is_retried_while_s3_is_away(s3: FakeS3) -> None:
    s3.failures = 1
    llama = FakeLlama({f"r{i}" for i in range(10)})
    result = await ActivityEnvironment().run(
        InferenceActivities(s3, llama, "box").run_shard,  # type: ignore[arg-type]
        ShardInput(batch_id=BATCH, bucket="b", shard=0),
    )
    assert result.completed == 10
    assert result_ids(s3) == [f"r{i}" for i in range(10)]
