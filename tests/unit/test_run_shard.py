"""run_shard on its own (ActivityEnvironment): what a cancel keeps, and what it does not;
what a shard handed over keeps, and how later attempts build on it."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from minio.error import S3Error
from temporalio.activity import ActivityCancellationDetails
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from kernel.inputs import ShardInput, ShardResult
from kernel.keys import result_key, shard_key
from kernel.results import ShardResults
from workers.activities.inference import HANDOVER_RETRY_DELAY, InferenceActivities
from workers.health import LlamaHealth
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
        if key not in self.objects:
            raise S3Error(None, "NoSuchKey", "missing", key, "", "")  # type: ignore[arg-type]
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


# A box whose llama-server is gone hands its shards over, keeping what it answered.


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored_ids(s3: FakeS3, attempt: int) -> list[str]:
    payload = s3.objects[result_key(BATCH, 0, attempt)]
    return [json.loads(line)["custom_id"] for line in payload.splitlines()]


def with_attempt(env: ActivityEnvironment, attempt: int) -> ActivityEnvironment:
    env.info = dataclasses.replace(env.info, attempt=attempt)
    return env


async def test_a_shard_whose_llama_server_is_gone_keeps_its_answers_and_fails_retryably(
    s3: FakeS3,
) -> None:
    clock = Clock()
    health = LlamaHealth(15.0, "http://llama", clock=clock)
    health.answered()
    llama = FakeLlama({"r0", "r2", "r5"})
    env = ActivityEnvironment()
    activities = InferenceActivities(s3, llama, "box-b", health)  # type: ignore[arg-type]
    task = await run_until_answered(env, activities, llama, 3)
    health.failed("connection refused")
    clock.now += 14.0
    await asyncio.sleep(0.5)
    assert not task.done(), "handed over before the hand-over time"
    clock.now += 2.0
    with pytest.raises(ApplicationError) as raised:
        async with asyncio.timeout(10):
            await task
    error = raised.value
    assert error.type == "LlamaDown" and not error.non_retryable
    assert error.next_retry_delay == HANDOVER_RETRY_DELAY
    assert "box box-b" in str(error) and "answered nothing for 16s" in str(error)
    assert "3 of 10 line(s) kept" in str(error)
    assert stored_ids(s3, 1) == ["r0", "r2", "r5"]


async def test_the_next_attempt_runs_only_what_is_left_and_writes_every_line_once(
    s3: FakeS3,
) -> None:
    s3.objects[result_key(BATCH, 0)] = b"".join(
        json.dumps(output_line(f"r{i}", 200, {}, "req_old", None)).encode() + b"\n"
        for i in (0, 2, 5)
    )
    llama = FakeLlama({f"r{i}" for i in range(10)})
    result = await with_attempt(ActivityEnvironment(), 2).run(
        InferenceActivities(s3, llama, "box-a").run_shard,  # type: ignore[arg-type]
        ShardInput(batch_id=BATCH, bucket="b", shard=0),
    )
    assert llama.answered == 7
    assert (result.completed, result.failed, result.box) == (10, 0, "box-a")
    assert stored_ids(s3, 2) == [f"r{i}" for i in range(10)]
    lines = ShardResults(s3, "b", BATCH).lines(1)  # type: ignore[arg-type]
    assert [json.loads(line)["custom_id"] for _, line in lines] == [f"r{i}" for i in range(10)]


async def test_a_box_known_gone_gives_a_shard_back_at_once(s3: FakeS3) -> None:
    clock = Clock()
    health = LlamaHealth(15.0, clock=clock)
    health.failed("HTTP 503")
    clock.now += 20.0
    llama = FakeLlama(set())
    with pytest.raises(ApplicationError, match="nothing answered here") as raised:
        await ActivityEnvironment().run(
            InferenceActivities(s3, llama, "box", health).run_shard,  # type: ignore[arg-type]
            ShardInput(batch_id=BATCH, bucket="b", shard=0),
        )
    assert raised.value.type == "LlamaDown"
    assert llama.answered == 0 and not any("/results/" in key for key in s3.objects)


async def test_an_earlier_attempt_writing_late_does_not_replace_the_latest(s3: FakeS3) -> None:
    """A box cut off mid-shard (its attempt timed out) comes back and finishes: its object
    lands beside the one of the attempt that won, which stays the shard's result."""
    llama = FakeLlama({f"r{i}" for i in range(10)})
    activities = InferenceActivities(s3, llama, "box")  # type: ignore[arg-type]
    params = ShardInput(batch_id=BATCH, bucket="b", shard=0)
    await with_attempt(ActivityEnvironment(), 2).run(activities.run_shard, params)
    won = s3.objects[result_key(BATCH, 0, 2)]
    s3.objects[result_key(BATCH, 0, 1)] = b'{"custom_id": "r0", "error": null, "late": 1}\n'
    assert ShardResults(s3, "b", BATCH).result_keys() == {0: result_key(BATCH, 0, 2)}  # type: ignore[arg-type]
    assert b"".join(line + b"\n" for _, line in ShardResults(s3, "b", BATCH).lines(1)) == won  # type: ignore[arg-type]


async def test_after_a_reset_an_attempt_writes_after_every_stored_one(s3: FakeS3) -> None:
    s3.objects[result_key(BATCH, 0, 3)] = json.dumps(
        output_line("r4", 200, {}, "req_old", None)
    ).encode()
    llama = FakeLlama({f"r{i}" for i in range(10)})
    await ActivityEnvironment().run(
        InferenceActivities(s3, llama, "box").run_shard,  # type: ignore[arg-type]
        ShardInput(batch_id=BATCH, bucket="b", shard=0),
    )
    assert llama.answered == 9
    assert stored_ids(s3, 4) == [f"r{i}" for i in range(10)]


async def test_a_box_cut_off_from_s3_gives_a_shard_up_without_waiting_for_its_write(
    s3: FakeS3,
) -> None:
    """The shard answered everything but S3 does not take the result: once S3 has been
    away for the hand-over time the shard fails retryably (`S3Down`) instead of retrying
    its write for minutes while heartbeating."""
    clock = Clock()
    health = LlamaHealth(15.0, clock=clock)
    health.answered()
    s3.failures = 10**6
    llama = FakeLlama({f"r{i}" for i in range(10)})
    activities = InferenceActivities(s3, llama, "box-b", health)  # type: ignore[arg-type]
    task = asyncio.create_task(
        ActivityEnvironment().run(
            activities.run_shard, ShardInput(batch_id=BATCH, bucket="b", shard=0)
        )
    )
    await asyncio.sleep(0.5)
    assert not task.done(), "the write is retried while S3 may come back"
    health.s3_failed("refused")
    clock.now += 16
    with pytest.raises(ApplicationError) as raised:
        async with asyncio.timeout(10):
            await task
    assert raised.value.type == "S3Down" and not raised.value.non_retryable
    assert raised.value.next_retry_delay == HANDOVER_RETRY_DELAY
    assert "box box-b: S3 has not answered for 16s" in str(raised.value)
