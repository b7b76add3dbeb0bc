"""Whether this box's llama-server answers, and what the GPU worker does when it does not.

A box whose llama-server stays down while its GPU worker lives must not keep shards that
another box could run: after LLAMA_DOWN_HANDOVER_SECONDS without a single answer (requests
refused, 503, timeouts, and a `/health` probe every second failing the same way), its shard
activities give their shards back (see `run_shard`) and the worker takes no new one until
llama-server answers again. The SDK has no "pause polling", but a worker polls only for a
task slot it holds: the GPU queue's activity slots come from `ShardSlots`, which hands out
none while llama-server is gone, so the box's pollers wait instead of taking shards.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from temporalio.worker import (
    CustomSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
)

from kernel.periodic import Periodic

logger = logging.getLogger(__name__)

PROBE_SECONDS = 1.0
# Long enough for a busy box (its HTTP threads answer /health beside the slots) not to look
# down; a timed-out probe counts as a failure from its start, so this adds no delay.
PROBE_TIMEOUT_SECONDS = 5.0
# How often a waiting poller or shard looks at the state again.
WATCH_SECONDS = 0.2


class LlamaHealth:
    """Since when llama-server has been failing without one answer in between.

    Fed by every request the worker sends (`answered` on any non-transient answer, `failed`
    on a transient failure) and by `llama_watch`'s probe, which also notices a llama-server
    that accepts connections but answers nothing (stopped, hung).
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

    def answered(self) -> None:
        if self.down_since is not None:
            logger.info("llama-server%s answers again after %.0fs", self._at(), self.down_for())
        if self._closed:
            logger.info("llama-server%s is back: this box takes shards again", self._at())
            self._closed = False
        self.ever_answered = True
        self.down_since = None
        self.problem = ""

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

    def down_for(self) -> float:
        """Seconds llama-server has been failing without an answer (0 while it answers)."""
        if self.down_since is None:
            return 0.0
        return max(0.0, self._clock() - self.down_since)

    @property
    def gone(self) -> bool:
        """Failing for the hand-over time: this box's shards go to others (never when the
        hand-over is off)."""
        return (
            self.handover_seconds > 0
            and self.down_since is not None
            and self.down_for() >= self.handover_seconds
        )

    @property
    def takes_shards(self) -> bool:
        """Whether the worker may take a shard now: llama-server has answered since the
        worker started (so a worker started while a model loads waits for it) and is not
        gone. Always with the hand-over off."""
        if self.handover_seconds <= 0:
            return True
        if self.gone and not self._closed:
            logger.warning(
                "llama-server%s not answering for %.0fs (%s): this box takes no shard until "
                "it answers",
                self._at(),
                self.down_for(),
                self.problem,
            )
            self._closed = True
        return self.ever_answered and not self.gone

    async def wait_gone(self) -> float:
        """Returns (how long it has been down) once llama-server is gone."""
        while not self.gone:
            await asyncio.sleep(WATCH_SECONDS)
        return self.down_for()

    def describe(self) -> str:
        return f"llama-server{self._at()} has answered nothing for {self.down_for():.0f}s" + (
            f" (last: {self.problem})" if self.problem else ""
        )

    def _at(self) -> str:
        return f" at {self.where}" if self.where else ""


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
