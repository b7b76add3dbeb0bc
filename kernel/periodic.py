"""A coroutine run every few seconds in the background of a long-lived process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Periodic:
    """Runs `action` every `interval` seconds, inside the running loop, from `start()` until
    `stop()`. A failure is logged (at `failure_level`, prefixed by `what`) and the loop goes
    on: a dependency being down must not end it."""

    def __init__(
        self,
        name: str,
        action: Callable[[], Awaitable[object]],
        interval: float,
        logger: logging.Logger,
        what: str,
        failure_level: int = logging.WARNING,
    ) -> None:
        self.name = name
        self.action = action
        self.interval = interval
        self.logger = logger
        self.what = what
        self.failure_level = failure_level
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                await self.action()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.logger.log(self.failure_level, "%s: %s", self.what, exc)
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
