"""`/metrics` after an API restart: the counters start from the batches' stored totals, not
from the batches that happened to close in the last seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from temporalio.client import WorkflowExecutionStatus

from app.services.metrics import Metrics
from app.services.temporal import TemporalService
from kernel.config import Settings

COMPLETED = WorkflowExecutionStatus.COMPLETED
RUNNING = WorkflowExecutionStatus.RUNNING


@dataclass
class Execution:
    id: str
    status: WorkflowExecutionStatus
    close_time: datetime | None
    completed: int
    failed: int = 0

    async def memo(self) -> dict[str, Any]:
        final = self.status != RUNNING
        return {
            "status": "completed" if final else "in_progress",
            "request_counts": {
                "total": self.completed + self.failed + (0 if final else 5),
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": {"input_tokens": self.completed * 10, "output_tokens": self.completed * 3},
        }


class FakeClient:
    """Lists the way the two metrics queries ask: every closed batch, or the running ones
    and those closed since a time."""

    def __init__(self, executions: list[Execution]) -> None:
        self.executions = executions

    async def list_workflows(self, query: str, **_: Any) -> AsyncIterator[Execution]:
        if "CloseTime >" in query:
            since = datetime.strptime(query.split("CloseTime > '")[1][:26], "%Y-%m-%dT%H:%M:%S.%f")
            since = since.replace(tzinfo=UTC)
            chosen = [e for e in self.executions if e.close_time is None or e.close_time > since]
        else:
            chosen = [e for e in self.executions if e.status != RUNNING]
        for execution in chosen:
            yield execution


class FakeTemporal:
    def __init__(self, client: FakeClient) -> None:
        self._client = client

    async def client(self) -> FakeClient:
        return self._client


def _value(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_a_restarted_api_counts_every_stored_batch() -> None:
    now = datetime.now(UTC)
    executions = [
        Execution("old-1", COMPLETED, now - timedelta(hours=2), completed=1000, failed=3),
        Execution("old-2", COMPLETED, now - timedelta(hours=1), completed=500),
        Execution("latest", COMPLETED, now - timedelta(seconds=5), completed=7),
        Execution("running", RUNNING, None, completed=20),
    ]
    client = FakeClient(executions)
    metrics = Metrics(Settings.model_construct(), cast(TemporalService, FakeTemporal(client)))
    await metrics._collect_batches()
    completed = {"outcome": "completed"}
    assert _value(metrics, "llm_batch_requests_total", completed) == 1000 + 500 + 7 + 20
    assert _value(metrics, "llm_batch_requests_total", {"outcome": "failed"}) == 3
    assert _value(metrics, "llm_batch_tokens_total", {"direction": "input"}) == 15270
    assert _value(metrics, "llm_batch_batches", {"status": "completed"}) == 3

    # The next scrape adds only what grew: the running batch's 5 more.
    executions[3].completed = 25
    await metrics._collect_batches()
    assert _value(metrics, "llm_batch_requests_total", completed) == 1532
    assert _value(metrics, "llm_batch_batches", {"status": "completed"}) == 3

    # Another API process (a restart) answers the same totals at its first scrape.
    again = Metrics(Settings.model_construct(), cast(TemporalService, FakeTemporal(client)))
    await again._collect_batches()
    assert _value(again, "llm_batch_requests_total", completed) == 1532
