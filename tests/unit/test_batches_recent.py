"""`BatchService.recent`: newest first by creation, whatever order the visibility store uses.

The fake client lists executions the way Temporal's SQL visibility store does: open
workflows first, closed ones by close time, newest first. Against the real server the same
behaviour is checked in tests/integration/test_readme.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from temporalio.client import WorkflowExecutionStatus

from app.services.batches import BatchService
from app.services.temporal import TemporalService
from kernel.config import Settings

RUNNING = WorkflowExecutionStatus.RUNNING
COMPLETED = WorkflowExecutionStatus.COMPLETED
CONTINUED = WorkflowExecutionStatus.CONTINUED_AS_NEW


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(1_800_000_000 + seconds, UTC)


@dataclass
class Execution:
    id: str
    status: WorkflowExecutionStatus
    created: int
    closed: int | None = None

    @property
    def start_time(self) -> datetime:
        return at(self.created)

    @property
    def close_time(self) -> datetime | None:
        return None if self.closed is None else at(self.closed)

    async def memo(self) -> dict[str, Any]:
        return {"created_at": 1_800_000_000 + self.created, "status": "in_progress"}


class FakeClient:
    def __init__(self, executions: list[Execution]) -> None:
        self.executions = executions
        self.read: list[str] = []

    async def list_workflows(self, query: str, **_: Any) -> AsyncIterator[Execution]:
        running = "ExecutionStatus = 'Running'" in query
        closed = "ExecutionStatus != 'Running'" in query
        opened = [e for e in self.executions if e.status == RUNNING]
        done = sorted(
            (e for e in self.executions if e.status != RUNNING),
            key=lambda e: e.closed or 0,
            reverse=True,
        )
        order = sorted(opened, key=lambda e: e.created, reverse=True) if running else []
        order += done if closed or not running else []
        for execution in order:
            self.read.append(execution.id)
            yield execution


class FakeTemporal:
    def __init__(self, client: FakeClient) -> None:
        self._client = client

    async def client(self) -> FakeClient:
        return self._client


def service(executions: list[Execution]) -> tuple[BatchService, FakeClient]:
    client = FakeClient(executions)
    temporal = cast(TemporalService, FakeTemporal(client))
    return BatchService(Settings.model_construct(), temporal, cast(Any, None)), client


async def test_open_batches_are_placed_by_creation_not_listed_first() -> None:
    batches, _ = service(
        [
            Execution("old-validating", RUNNING, created=0),
            Execution("new-done", COMPLETED, created=10, closed=11),
            Execution("middle-done", COMPLETED, created=5, closed=20),
            Execution("middle-run", CONTINUED, created=6, closed=7),
        ]
    )
    listed = [b.id for b in await batches.recent(10)]
    assert listed == ["new-done", "middle-done", "old-validating"]


async def test_stops_reading_closed_batches_once_none_can_be_newer() -> None:
    closed = [Execution(f"b{n}", COMPLETED, created=n, closed=n + 1) for n in range(100)]
    batches, client = service([Execution("running", RUNNING, created=98), *closed])
    listed = [b.id for b in await batches.recent(3)]
    assert listed == ["b99", "running", "b98"]
    # b97 closed at 98, not before the oldest kept creation (98): read; b96 closed at 97 stops.
    assert client.read == ["running", "b99", "b98", "b97", "b96"]


class ClosingMeanwhileClient(FakeClient):
    """A batch that closes between the two listings shows up in both."""

    async def list_workflows(self, query: str, **kwargs: Any) -> AsyncIterator[Execution]:
        async for execution in super().list_workflows(query, **kwargs):
            yield execution
        if "ExecutionStatus = 'Running'" in query:
            for execution in self.executions:
                if execution.status == RUNNING:
                    execution.status, execution.closed = COMPLETED, 50


async def test_a_batch_listed_twice_is_listed_once() -> None:
    client = ClosingMeanwhileClient(
        [Execution("closing", RUNNING, created=40), Execution("done", COMPLETED, 10, 11)]
    )
    temporal = cast(TemporalService, FakeTemporal(client))
    batches = BatchService(Settings.model_construct(), temporal, cast(Any, None))
    for limit in (1, 2, 10):
        client.executions[0].status, client.executions[0].closed = RUNNING, None
        listed = [b.id for b in await batches.recent(limit)]
        assert listed == ["closing", "done"][:limit]
