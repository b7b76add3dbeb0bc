"""Autostop's idle clock and release decision, with the probes and the release replaced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kernel.config import Settings
from workers import autostop


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_work_resets_the_clock_and_says_why() -> None:
    clock = autostop.IdleClock(0.0)
    assert clock.observe(autostop.Work(requests_total=5), 10.0) == []
    assert clock.idle_for(10.0) == 10.0  # the first total is a baseline, not work
    assert clock.observe(autostop.Work(requests_total=8), 20.0) == ["3 request(s) served"]
    assert clock.idle_for(25.0) == 5.0
    reasons = clock.observe(autostop.Work(batches=1, backlog=4, requests_total=8), 30.0)
    assert reasons == ["1 batch(es) running", "4 task(s) waiting on the GPU queue"]
    assert clock.observe(autostop.Work(in_flight=2, requests_total=8), 40.0) == [
        "2 request(s) in flight here"
    ]
    assert clock.idle_for(41.0) == 1.0


def test_release_action_follows_the_mode() -> None:
    assert autostop.release_action(settings(DEPLOY_MODE="hybrid")) == "destroy"
    assert autostop.release_action(settings(DEPLOY_MODE="standalone")) == "stop"
    assert autostop.release_action(settings(IDLE_RELEASE_ACTION="stop")) == "stop"


def test_container_values_come_from_the_first_process(tmp_path: Path) -> None:
    environ = tmp_path / "environ"
    environ.write_bytes(b"PATH=/bin\0CONTAINER_ID=4242\0CONTAINER_API_KEY=k=v\0")
    assert autostop.container_value("CONTAINER_ID", "", environ) == "4242"
    assert autostop.container_value("CONTAINER_API_KEY", "", environ) == "k=v"
    assert autostop.container_value("CONTAINER_ID", "7", environ) == "7"
    assert autostop.container_value("MISSING", "", tmp_path / "none") == ""


async def test_releases_only_after_the_idle_limit_without_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = settings(IDLE_RELEASE_MINUTES=0.02, BOX_NAME="box-x")  # 1.2 s
    busy_until = asyncio.get_running_loop().time() + 1.5
    released: list[tuple[float, str]] = []

    async def look(_: Settings) -> autostop.Work:
        loop = asyncio.get_running_loop()
        return autostop.Work(batches=1 if loop.time() < busy_until else 0)

    async def release(_: Settings, action: str) -> str:
        released.append((asyncio.get_running_loop().time(), action))
        return f"{action}ed"

    caplog.set_level("INFO", logger="autostop")
    assert await asyncio.wait_for(autostop.watch(config, look, release), 10) == "destroyed"
    ((when, action),) = released
    assert action == "destroy"
    # a full idle limit after the last check that saw the batch (one check, 0.12 s, before)
    assert when >= busy_until + 1.2 - 0.15
    assert "no batch running, no GPU-queue backlog and no request on box box-x" in caplog.text


async def test_a_refused_release_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    config = settings(IDLE_RELEASE_MINUTES=0.005)
    attempts = []

    async def look(_: Settings) -> autostop.Work:
        return autostop.Work(unknown=("Temporal (connection refused)",))

    async def release(_: Settings, action: str) -> str:
        attempts.append(action)
        if len(attempts) < 2:
            raise RuntimeError("the Vast API refused to destroy instance 1: HTTP 401")
        return "destroyed"

    assert await asyncio.wait_for(autostop.watch(config, look, release), 10) == "destroyed"
    assert len(attempts) == 2
    assert "HTTP 401" in caplog.text and "cannot read Temporal" in caplog.text


async def test_an_unreadable_control_plane_is_logged_once_not_every_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = settings(IDLE_RELEASE_MINUTES=0.005)
    looks = []

    async def look(_: Settings) -> autostop.Work:
        looks.append(1)
        return autostop.Work(unknown=(f"Temporal (timed out, try {len(looks)})",))

    async def release(_: Settings, action: str) -> str:
        if len(looks) < 5:
            raise RuntimeError("the Vast API refused to destroy instance 1: HTTP 401")
        return "destroyed"

    caplog.set_level("INFO", logger="autostop")
    assert await asyncio.wait_for(autostop.watch(config, look, release), 10) == "destroyed"
    assert len(looks) >= 5
    assert caplog.text.count("cannot read Temporal") == 1, caplog.text
