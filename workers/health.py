"""Whether this box can do its work, and what the GPU worker does when it cannot.

A box must not keep shards that another box could run while it cannot finish them. Three
ways it cannot, each measured as a stretch of time without one success in between:

- llama-server answers nothing (requests refused, 503 while loading, timeouts, and a
  `/health` probe every second failing the same way): `down`;
- llama-server answers `/health` but fails every request (5xx for everything, a driver
  fault): `failing`. A request failing transiently starts the stretch; while it lasts a
  tiny real request (`check_request`) is sent every few seconds, so one bad prompt on a
  sound server is cleared by the next check, and a sick server's stretch is cleared only
  by a request that succeeds (a check or a shard's);
- S3 does not answer (a probe of the bucket every second or two with short timeouts, no
  retries): `s3`. A box cut off from S3 keeps heartbeating to Temporal, so nothing else
  would move its shards; its S3 calls would hang or retry for minutes.

After LLAMA_DOWN_HANDOVER_SECONDS of any of them its shard activities give their shards
back (see `run_shard`) and the worker takes no new one until the cause is over. The SDK has
no "pause polling", but a worker polls only for a task slot it holds: the GPU queue's
activity slots come from `ShardSlots`, which hands out none while the box cannot work, so
the box's pollers wait instead of taking shards.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error
from temporalio.worker import (
    CustomSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
)

from kernel.config import Settings
from kernel.periodic import Periodic

logger = logging.getLogger(__name__)

PROBE_SECONDS = 1.0
# Long enough for a busy box (its HTTP threads answer /health beside the slots) not to look
# down; a timed-out probe counts as a failure from its start, so this adds no delay.
PROBE_TIMEOUT_SECONDS = 5.0
# How often a waiting poller or shard looks at the state again.
WATCH_SECONDS = 0.2
# While requests fail: how often a tiny real request checks llama-server, and how long it
# may take (it queues behind the busy slots of a sound server).
CHECK_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 30.0
# The S3 probe: a bucket lookup, no retries. Timeouts generous enough for a slow link
# (seconds of delay, some loss) to count as a link, not as an outage; a probe that times
# out counts as a failure from its start, so they add no delay to noticing one.
S3_PROBE_SECONDS = 2.0
S3_PROBE_CONNECT_SECONDS = 5.0
S3_PROBE_READ_SECONDS = 10.0
# S3 calls run on threads of their own, never on asyncio's default pool (6 threads on a
# 2-core box): a call abandoned while S3 was cut off may hang for minutes in its client's
# timeouts and retries, and a few of them would starve everything else that runs in a
# thread, the S3 probe first, which then could never notice the outage.
S3_CALL_THREADS = 32

T = TypeVar("T")


class S3Gone(Exception):
    """S3 has not answered this box for the hand-over time: what was waiting on it is
    dropped (a thread still writing may finish later, at its attempt's own key)."""


@dataclass
class Stretch:
    """A stretch of failures without one success in between."""

    since: float | None = None
    problem: str = ""
    closed: bool = False  # whether the gate was announced closed for it

    def fail(self, at: float, problem: str) -> bool:
        """True when the stretch starts now."""
        started = self.since is None
        self.since = at if self.since is None else min(self.since, at)
        self.problem = problem
        return started

    def length(self, now: float) -> float:
        return 0.0 if self.since is None else max(0.0, now - self.since)


class LlamaHealth:
    """Since when llama-server has been failing without one answer in between, since when
    its requests have been failing without one success, and since when S3 has not answered.

    Fed by every request the worker sends (`answered` on any non-transient answer, `failed`
    on a refused or timed-out one, `request_failed` on a 5xx), by `llama_watch`'s probe,
    which also notices a llama-server that accepts connections but answers nothing
    (stopped, hung), by its request check and by its S3 probe (`s3_answered`/`s3_failed`).
    """

    def __init__(
        self, handover_seconds: float, where: str = "", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.handover_seconds = handover_seconds
        self.where = where
        self._clock = clock
        self.ever_answered = False
        self.down_since: float | None = None
        self.problem = ""
        self._closed = False  # whether the gate was announced closed
        self.requests = Stretch()  # requests failing while llama-server answers /health
        self.s3 = Stretch()
        self._s3_threads = ThreadPoolExecutor(S3_CALL_THREADS, thread_name_prefix="s3-call")

    def now(self) -> float:
        return self._clock()

    def answered(self) -> None:
        """llama-server answered (a probe or a request): it is there."""
        if self.down_since is not None:
            logger.info("llama-server%s answers again after %.0fs", self._at(), self.down_for())
        if self._closed:
            logger.info("llama-server%s is back: this box takes shards again", self._at())
            self._closed = False
        self.ever_answered = True
        self.down_since = None
        self.problem = ""

    def request_answered(self) -> None:
        """A request got a real answer (not a transient failure): llama-server works."""
        self.answered()
        if self.requests.since is not None:
            logger.info(
                "llama-server%s answers requests again after %.0fs",
                self._at(),
                self.requests.length(self._clock()),
            )
            if self.requests.closed:
                logger.info("llama-server%s works again: this box takes shards", self._at())
        self.requests = Stretch()

    def request_failed(self, problem: str, since: float | None = None) -> None:
        """A request failed transiently while llama-server may still answer `/health` (a
        5xx, a request past its deadline)."""
        at = self._clock() if since is None else since
        if self.requests.fail(at, problem):
            logger.debug("llama-server%s failing requests: %s", self._at(), problem)

    @property
    def checking(self) -> bool:
        """Whether requests are failing, so a tiny real request should check llama-server."""
        return self.requests.since is not None

    def failed(self, problem: str, since: float | None = None) -> None:
        """A transient failure; `since` is when the failed attempt began (a timeout is a
        failure from its start)."""
        at = self._clock() if since is None else since
        if self.down_since is None:
            logger.debug("llama-server%s not answering: %s", self._at(), problem)
            self.down_since = at
        else:
            self.down_since = min(self.down_since, at)
        self.problem = problem

    def s3_answered(self) -> None:
        if self.s3.since is not None:
            logger.info("S3 answers again after %.0fs", self.s3.length(self._clock()))
            if self.s3.closed:
                logger.info("S3 is back: this box takes shards again")
        self.s3 = Stretch()

    def s3_failed(self, problem: str, since: float | None = None) -> None:
        at = self._clock() if since is None else since
        if self.s3.fail(at, problem):
            logger.debug("S3 not answering: %s", problem)

    def down_for(self) -> float:
        """Seconds llama-server has been failing without an answer (0 while it answers)."""
        if self.down_since is None:
            return 0.0
        return max(0.0, self._clock() - self.down_since)

    def _over(self, seconds: float) -> bool:
        return self.handover_seconds > 0 and seconds >= self.handover_seconds

    @property
    def llama_gone(self) -> bool:
        """llama-server answering nothing, or failing every request, for the hand-over time."""
        return self._over(self.down_for()) or self._over(self.requests.length(self._clock()))

    @property
    def s3_gone(self) -> bool:
        return self._over(self.s3.length(self._clock()))

    @property
    def gone(self) -> bool:
        """This box cannot work for the hand-over time: its shards go to others (never when
        the hand-over is off)."""
        return self.llama_gone or self.s3_gone

    @property
    def cause(self) -> str:
        """Why the box is gone, as the type of the failure that hands a shard over."""
        if self.s3_gone:
            return "S3Down"
        if self._over(self.down_for()):
            return "LlamaDown"
        return "LlamaFailing"

    @property
    def takes_shards(self) -> bool:
        """Whether the worker may take a shard now: llama-server has answered since the
        worker started (so a worker started while a model loads waits for it) and the box
        is not gone. Always with the hand-over off."""
        if self.handover_seconds <= 0:
            return True
        gone = self.gone
        if gone and not self._announced():
            logger.warning("%s: this box takes no shard until it is over", self.describe())
        return self.ever_answered and not gone

    def _announced(self) -> bool:
        """Whether the current cause was already logged (marks it so)."""
        if self.s3_gone:
            stretch_closed, self.s3.closed = self.s3.closed, True
            return stretch_closed
        if self._over(self.down_for()):
            was, self._closed = self._closed, True
            return was
        was, self.requests.closed = self.requests.closed, True
        return was

    async def wait_gone(self) -> float:
        """Returns (how long it has been down) once the box is gone."""
        while not self.gone:
            await asyncio.sleep(WATCH_SECONDS)
        return self.down_for()

    async def s3_call(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` in a thread, unless S3 is gone first: then raises S3Gone at once,
        leaving the thread to end by itself (its result dropped)."""
        if self.s3_gone:
            raise S3Gone(self.describe_s3())
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._s3_threads, functools.partial(call, *args))
        if self.handover_seconds <= 0:
            return await work
        gone = asyncio.ensure_future(self._wait_s3_gone())
        try:
            waiters: set[asyncio.Future[Any]] = {work, gone}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            gone.cancel()
            work.add_done_callback(_drop_result)
            raise
        gone.cancel()
        if work.done():
            return work.result()
        work.add_done_callback(_drop_result)
        raise S3Gone(self.describe_s3())

    async def _wait_s3_gone(self) -> None:
        while not self.s3_gone:
            await asyncio.sleep(WATCH_SECONDS)

    def describe_s3(self) -> str:
        now = self._clock()
        return f"S3 has not answered for {self.s3.length(now):.0f}s" + (
            f" (last: {self.s3.problem})" if self.s3.problem else ""
        )

    def describe(self) -> str:
        if self.s3_gone:
            return self.describe_s3()
        if not self._over(self.down_for()) and self._over(self.requests.length(self._clock())):
            return (
                f"llama-server{self._at()} answers /health but has failed every request for "
                f"{self.requests.length(self._clock()):.0f}s (last: {self.requests.problem})"
            )
        return f"llama-server{self._at()} has answered nothing for {self.down_for():.0f}s" + (
            f" (last: {self.problem})" if self.problem else ""
        )

    def _at(self) -> str:
        return f" at {self.where}" if self.where else ""


def _drop_result(task: asyncio.Future[Any]) -> None:
    """Retrieves an abandoned call's outcome (so asyncio does not log it as never retrieved)."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("an abandoned S3 call failed: %r", task.exception())


class ShardSlots(CustomSlotSupplier):
    """The GPU queue worker's activity slots: at most `size` at once, none while llama-server
    is gone (or has not answered yet since the worker started).

    A poll needs a slot first, so while none is handed out the worker does not poll, and
    Temporal gives the queue's shards to the other boxes (or keeps them queued until this
    one is back). The few polls already waiting when llama-server went away may still
    bring a shard in: `run_shard` gives it back at once.
    """

    def __init__(self, size: int, health: LlamaHealth) -> None:
        self.size = size
        self.health = health
        self.used = 0
        # release_slot may be called from the SDK's own threads.
        self._lock = threading.Lock()

    def _take(self) -> SlotPermit | None:
        with self._lock:
            if self.used < self.size and self.health.takes_shards:
                self.used += 1
                return SlotPermit()
        return None

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        while (permit := self._take()) is None:
            await asyncio.sleep(WATCH_SECONDS)
        return permit

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        return self._take()

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        pass

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        with self._lock:
            self.used -= 1


def llama_watch(probe: Callable[[], Awaitable[None]], interval: float = PROBE_SECONDS) -> Periodic:
    """Probes llama-server every PROBE_SECONDS for the whole life of the GPU worker."""
    return Periodic("llama-watch", probe, interval, logger, "probing llama-server")


def s3_probe_client(settings: Settings) -> Minio:
    """An S3 client for the probe only: its own small pool, short timeouts, no retries (the
    workers' client retries for a minute, which is what a probe must not do)."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=S3_PROBE_CONNECT_SECONDS, read=S3_PROBE_READ_SECONDS),
        retries=urllib3.Retry(total=0),
        maxsize=1,
    )
    return Minio(
        settings.MINIO_ENDPOINT,
        access_key=settings.MINIO_ACCESS_KEY,
        secret_key=settings.MINIO_SECRET_KEY.get_secret_value(),
        secure=settings.MINIO_SECURE,
        http_client=http,
    )


class BoxWatch:
    """What runs beside the GPU worker for its whole life: the llama-server `/health` probe,
    the request check while requests fail, and the S3 probe, all feeding `health`."""

    def __init__(
        self,
        health: LlamaHealth,
        probe_llama: Callable[[], Awaitable[None]],
        check_request: Callable[[], Awaitable[None]],
        s3: Minio | None,
        bucket: str,
    ) -> None:
        self.health = health
        self._check_request = check_request
        self._s3 = s3
        self._bucket = bucket
        # One thread of its own: the probe runs however many S3 calls hang elsewhere.
        self._probe_thread = ThreadPoolExecutor(1, thread_name_prefix="s3-probe")
        self._loops = [
            llama_watch(probe_llama),
            Periodic("llama-check", self.check_llama, CHECK_SECONDS, logger, "checking llama"),
        ]
        if s3 is not None:
            self._loops.append(
                Periodic("s3-watch", self.probe_s3, S3_PROBE_SECONDS, logger, "probing S3")
            )

    @property
    def running(self) -> bool:
        return any(loop.running for loop in self._loops)

    def start(self) -> None:
        for loop in self._loops:
            loop.start()

    async def stop(self) -> None:
        for loop in self._loops:
            await loop.stop()
        self._probe_thread.shutdown(wait=False, cancel_futures=True)

    async def check_llama(self) -> None:
        if self.health.checking:
            await self._check_request()

    async def probe_s3(self) -> None:
        """One bucket lookup; any answer from the server (even an error) means it is there."""
        assert self._s3 is not None
        started = self.health.now()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._probe_thread, self._s3.bucket_exists, self._bucket)
        except S3Error:
            pass  # an answer: S3 is reachable
        except Exception as exc:  # urllib3's connection errors and timeouts, OSError
            self.health.s3_failed(f"{type(exc).__name__}: {exc}", since=started)
            return
        self.health.s3_answered()
