"""A box's view of its llama-server: when it counts as gone, and how the GPU worker's
shard slots follow it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import pytest

from workers.activities.inference import HANDOVER_RETRY_DELAY
from workers.health import BoxWatch, LlamaHealth, ShardSlots
from workers.llama import Answer, LlamaClient
from workers.workflows.batch import SHARD_HEARTBEAT, SHARD_RETRY


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_gone_after_the_hand_over_time_without_one_answer(clock: Clock) -> None:
    health = LlamaHealth(15.0, clock=clock)
    health.answered()
    health.failed("refused")
    clock.now += 10
    health.failed("refused again")  # keeps counting from the first failure
    assert health.down_for() == 10 and not health.gone and health.takes_shards
    clock.now += 5
    assert health.gone and not health.takes_shards
    assert "answered nothing for 15s (last: refused again)" in health.describe()
    health.answered()
    assert health.down_for() == 0 and not health.gone and health.takes_shards


def test_an_answer_in_between_starts_the_count_again(clock: Clock) -> None:
    health = LlamaHealth(15.0, clock=clock)
    health.answered()
    health.failed("503")
    clock.now += 12
    health.answered()
    health.failed("503")
    clock.now += 12
    assert not health.gone


def test_a_timeout_counts_from_when_the_probe_began(clock: Clock) -> None:
    health = LlamaHealth(15.0, clock=clock)
    health.answered()
    started = clock.now
    clock.now += 2
    health.failed("GET /health: TimeoutError()", since=started)
    clock.now += 13
    assert health.gone


def test_a_worker_takes_no_shard_before_llama_server_first_answers(clock: Clock) -> None:
    health = LlamaHealth(15.0, clock=clock)
    assert not health.takes_shards  # e.g. started while the model still loads
    health.answered()
    assert health.takes_shards


def test_with_the_hand_over_off_nothing_is_ever_gone(clock: Clock) -> None:
    health = LlamaHealth(0.0, clock=clock)
    assert health.takes_shards
    health.failed("refused")
    clock.now += 3600
    assert not health.gone and health.takes_shards


async def test_shard_slots_are_held_back_while_llama_server_is_gone(clock: Clock) -> None:
    health = LlamaHealth(15.0, clock=clock)
    health.answered()
    slots = ShardSlots(2, health)
    ctx: Any = None
    first = await slots.reserve_slot(ctx)
    await slots.reserve_slot(ctx)
    assert slots.try_reserve_slot(ctx) is None, "two slots at most"
    slots.release_slot(ctx)
    health.failed("refused")
    clock.now += 16
    assert slots.try_reserve_slot(ctx) is None
    waiting = asyncio.create_task(slots.reserve_slot(ctx))
    await asyncio.sleep(0.5)
    assert not waiting.done(), "a poll while llama-server is gone"
    health.answered()
    async with asyncio.timeout(5):
        assert isinstance(await waiting, type(first))
    assert slots.used == 2


async def test_the_client_reports_answers_and_failures(clock: Clock) -> None:
    health = LlamaHealth(15.0, clock=clock)
    llama = LlamaClient("http://127.0.0.1:1", health=health)
    answers: list[Any] = [
        aiohttp.ClientConnectionError("refused"),
        Answer(503, b""),
        Answer(200, b"{}"),
    ]

    async def send() -> Answer:
        item = answers.pop(0)
        if isinstance(item, Exception):
            raise item
        assert health.down_since is not None  # failing until this answer
        return item

    assert (await llama._with_retries(send, "POST /x")).status == 200
    assert health.ever_answered and health.down_since is None

    async def refused(*args: Any, **kwargs: Any) -> Answer:
        raise aiohttp.ClientConnectionError("refused")

    llama._request = refused  # type: ignore[method-assign]
    await llama.check_health()
    assert health.down_since is not None and "refused" in health.problem


def test_hand_overs_can_never_exhaust_a_shard_s_retries() -> None:
    """A shard is retried without limit and, handed over, offered again at once: a box
    whose llama-server is gone for an hour only delays it."""
    assert SHARD_RETRY.maximum_attempts == 0  # unlimited
    assert SHARD_RETRY.non_retryable_error_types in (None, [])
    assert HANDOVER_RETRY_DELAY < SHARD_HEARTBEAT


# A sick llama-server (it answers /health, fails every request) and S3 out of reach.


def test_requests_failing_while_health_answers_is_gone_after_the_hand_over_time(
    clock: Clock,
) -> None:
    health = LlamaHealth(10.0, clock=clock)
    health.answered()
    health.request_failed("POST /v1/chat/completions: HTTP 500")
    assert health.checking
    clock.now += 6
    health.answered()  # the /health probe: alive, which clears nothing here
    clock.now += 4
    assert health.gone and health.cause == "LlamaFailing" and not health.takes_shards
    assert "answers /health but has failed every request for 10s" in health.describe()
    health.request_answered()  # a check request (or a shard's) succeeded
    assert not health.gone and not health.checking and health.takes_shards


def test_one_request_succeeding_in_between_starts_the_count_again(clock: Clock) -> None:
    health = LlamaHealth(10.0, clock=clock)
    health.answered()
    health.request_failed("HTTP 500")
    clock.now += 8
    health.request_answered()
    health.request_failed("HTTP 500")
    clock.now += 8
    assert not health.gone


def test_s3_out_of_reach_for_the_hand_over_time_stops_the_box(clock: Clock) -> None:
    health = LlamaHealth(10.0, clock=clock)
    health.answered()
    started = clock.now
    clock.now += 5
    health.s3_failed("ConnectTimeoutError", since=started)  # a probe that timed out
    assert not health.gone
    clock.now += 5
    assert health.s3_gone and health.gone and health.cause == "S3Down"
    assert not health.takes_shards
    assert "S3 has not answered for 10s (last: ConnectTimeoutError)" in health.describe()
    health.s3_answered()
    assert not health.gone and health.takes_shards


async def test_an_s3_call_is_dropped_once_s3_is_gone(clock: Clock) -> None:
    from workers.health import S3Gone

    health = LlamaHealth(10.0, clock=clock)
    health.answered()
    assert await health.s3_call(lambda x: x + 1, 1) == 2
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hangs() -> None:  # a write to an S3 that no longer answers
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()

    call = asyncio.create_task(health.s3_call(hangs))
    await asyncio.sleep(0.3)
    assert not call.done()
    health.s3_failed("refused")
    clock.now += 11
    with pytest.raises(S3Gone, match="S3 has not answered for 11s"):
        async with asyncio.timeout(5):
            await call
    release.set()


async def test_the_client_counts_a_500_as_a_failing_request_and_checks_with_a_tiny_one(
    clock: Clock,
) -> None:
    health = LlamaHealth(10.0, clock=clock)
    llama = LlamaClient("http://127.0.0.1:1", health=health)
    answers = [Answer(500, b"{}"), Answer(200, b"{}")]
    sent: list[tuple[str, str]] = []

    async def request(method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        sent.append((method, path))
        return answers.pop(0)

    llama._request = request  # type: ignore[method-assign]
    await llama.check_request()
    assert health.checking and health.down_since is None  # it answers, with a failure
    await llama.check_request()
    assert not health.checking
    assert sent == [("POST", "/completion")] * 2


async def test_one_bad_prompt_becomes_its_error_line_after_its_budget(clock: Clock) -> None:
    llama = LlamaClient("http://127.0.0.1:1", retry_budget_seconds=0.3)
    llama._slots = 1

    async def request(method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        return Answer(500, b'{"error": {"message": "bad prompt"}}')

    llama._request = request  # type: ignore[method-assign]
    line = await llama.run("c1", "/v1/chat/completions", {})
    assert line["error"] == {"code": "llama_http_500", "message": "bad prompt"}


async def test_s3_calls_and_the_probe_run_while_the_default_thread_pool_is_stuck() -> None:
    """Calls abandoned while S3 was cut off may hang for minutes in their client's timeouts:
    filling asyncio's default pool with them must not stop new S3 calls or the S3 probe,
    which would then never notice the outage."""
    release = threading.Event()
    loop = asyncio.get_running_loop()
    stuck = [loop.run_in_executor(None, release.wait) for _ in range(64)]
    health = LlamaHealth(10.0)

    class Unreachable:
        def bucket_exists(self, bucket: str) -> bool:
            raise OSError(101, "Network is unreachable")

    async def nothing() -> None:
        pass

    watch = BoxWatch(health, nothing, nothing, Unreachable(), "bucket")  # type: ignore[arg-type]
    try:
        assert await asyncio.wait_for(health.s3_call(lambda: "answered"), 5) == "answered"
        await asyncio.wait_for(watch.probe_s3(), 5)
        assert health.s3.since is not None, "the probe saw S3 out of reach"
    finally:
        release.set()
        await asyncio.gather(*stuck)
        await watch.stop()
