"""A coroutine run every few seconds in the background of a long-lived process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

# While an action keeps failing, how often the log is reminded that it still does.
REMINDER_SECONDS = 120.0


class FailureStretch:
    """A stretch of failures told as a change of state, not once per try: the first
    failure, then a reminder every `reminder_seconds` with how long it has lasted and the
    latest error, then one line when it works again. `say` gets each line."""

    def __init__(
        self,
        what: str,
        say: Callable[[str], None],
        reminder_seconds: float = REMINDER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.say = say
        self.reminder_seconds = reminder_seconds
        self._clock = clock
        self.failing_since: float | None = None
        self._reminded_at = 0.0
        self._failures = 0

    def failed(self, exc: Exception) -> None:
        now = self._clock()
        self._failures += 1
        if self.failing_since is None:
            self.failing_since = self._reminded_at = now
            self.say(f"{self.what}: {exc}")
        elif now - self._reminded_at >= self.reminder_seconds:
            self._reminded_at = now
            self.say(
                f"{self.what}: still failing after {now - self.failing_since:.0f}s "
                f"({self._failures} tries): {exc}"
            )

    def worked(self) -> None:
        if self.failing_since is not None:
            self.say(
                f"{self.what}: works again after {self._clock() - self.failing_since:.0f}s "
                f"({self._failures} failed tries)"
            )
        self.failing_since = None
        self._failures = 0


class Periodic:
    """Runs `action` every `interval` seconds, inside the running loop, from `start()` until
    `stop()`. A failure is logged (at `failure_level`, prefixed by `what`) and the loop goes
    on: a dependency being down must not end it.

    A stretch of failures (a dependency away for minutes: the laptop that holds Temporal
    and S3 asleep) is logged as a change of state, not once per try: its first failure,
    then a reminder every REMINDER_SECONDS with how long it has lasted and the latest
    error, then one line when the action works again."""

    def __init__(
        self,
        name: str,
        action: Callable[[], Awaitable[object]],
        interval: float,
        logger: logging.Logger,
        what: str,
        failure_level: int = logging.WARNING,
        reminder_seconds: float = REMINDER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.action = action
        self.interval = interval
        self.logger = logger
        self.what = what
        self.failure_level = failure_level
        self.reminder_seconds = reminder_seconds
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stretch = FailureStretch(
            what,
            lambda line: logger.log(failure_level, "%s", line),
            reminder_seconds,
            clock,
        )

    @property
    def failing_since(self) -> float | None:
        return self._stretch.failing_since

    async def run_once(self) -> bool:
        """One run of the action, logged as above; whether it worked."""
        try:
            await self.action()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._stretch.failed(exc)
            return False
        self._stretch.worked()
        return True

    async def _run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
