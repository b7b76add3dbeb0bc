"""Tracks whether a worker has work, so it can exit by itself when idle."""

from __future__ import annotations

import time
from typing import Any

from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)


class IdleTracker(Interceptor):
    """Counts activities in flight and remembers when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_busy = time.monotonic()

    def touch(self) -> None:
        self.last_busy = time.monotonic()

    def idle_seconds(self) -> float:
        if self.in_flight:
            return 0.0
        return time.monotonic() - self.last_busy

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TrackingActivityInbound(next, self)


class _TrackingActivityInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, tracker: IdleTracker) -> None:
        super().__init__(next)
        self._tracker = tracker

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        self._tracker.in_flight += 1
        self._tracker.touch()
        try:
            return await self.next.execute_activity(input)
        finally:
            self._tracker.in_flight -= 1
            self._tracker.touch()
