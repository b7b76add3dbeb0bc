"""A background loop whose dependency is away logs the change of state, not every try."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kernel.periodic import Periodic


def test_a_long_failure_is_logged_once_then_reminded_then_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outcomes = iter([True] + [False] * 300 + [True, True])

    async def action() -> None:
        if not next(outcomes):
            raise ConnectionRefusedError("S3 at 127.0.0.1:9000 refused")

    loop = Periodic("t", action, 1.0, logging.getLogger("t"), "publishing", clock=lambda: now[0])

    async def run() -> None:
        for _ in range(303):
            await loop.run_once()
            now[0] += 1.0  # one try a second: five minutes of failures

    with caplog.at_level(logging.INFO, logger="t"):
        asyncio.run(run())
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "publishing: S3 at 127.0.0.1:9000 refused",
        "publishing: still failing after 120s (121 tries): S3 at 127.0.0.1:9000 refused",
        "publishing: still failing after 240s (241 tries): S3 at 127.0.0.1:9000 refused",
        "publishing: works again after 300s (300 failed tries)",
    ], messages
    assert loop.failing_since is None
