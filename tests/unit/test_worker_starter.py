"""WorkerStarter: asks supervisord for the worker programs work needs, at most once a second
for a worker it has seen running."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.services.workers import RECENTLY_RUNNING_SECONDS, WorkerStarter
from kernel.supervisor import StartResult, SupervisorControl


class RecordingSupervisor(SupervisorControl):
    def __init__(self, outcomes: dict[str, str]) -> None:
        super().__init__(Path("/nonexistent.sock"))
        self.outcomes = outcomes
        self.asked: list[str] = []

    async def start(self, program: str) -> StartResult:
        self.asked.append(program)
        return StartResult(program, self.outcomes[program])  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_disabled_starts_nothing() -> None:
    supervisor = RecordingSupervisor({})
    assert asyncio.run(WorkerStarter(supervisor, enabled=False).ensure()) == {}
    assert supervisor.asked == []


def test_a_worker_seen_running_is_not_asked_again_for_a_moment() -> None:
    supervisor = RecordingSupervisor({"worker-cpu": "started", "worker-gpu": "already_running"})
    clock = Clock()
    starter = WorkerStarter(supervisor, enabled=True, clock=clock)

    first = asyncio.run(starter.ensure())
    assert first == {"worker-cpu": "started", "worker-gpu": "already_running"}
    clock.now += RECENTLY_RUNNING_SECONDS / 2
    assert asyncio.run(starter.ensure(("gpu",))) == {"worker-gpu": "already_running"}
    assert supervisor.asked == ["worker-cpu", "worker-gpu"]

    clock.now += RECENTLY_RUNNING_SECONDS
    asyncio.run(starter.ensure(("gpu",)))
    assert supervisor.asked == ["worker-cpu", "worker-gpu", "worker-gpu"]


def test_a_failed_start_is_asked_again_every_time() -> None:
    supervisor = RecordingSupervisor({"worker-gpu": "unavailable"})
    starter = WorkerStarter(supervisor, enabled=True, clock=Clock())
    for _ in range(3):
        assert asyncio.run(starter.ensure(("gpu",))) == {"worker-gpu": "unavailable"}
    assert supervisor.asked == ["worker-gpu"] * 3
