"""Edges of the batch API: an Idempotency-Key reused with another body, metadata limits,
and `GET /batches` filters, cursor and unknown parameters. Temporal is a double here; the
listing against the real server is in tests/integration/test_readme.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from temporalio.client import WorkflowExecutionStatus

from app.main import create_app
from app.services.batches import REQUEST_DIGEST, BatchService, IdempotencyKeyReused
from app.services.temporal import TemporalService
from kernel.config import Settings
from kernel.inputs import BATCH_WORKFLOW
from tests.unit.test_api import settings

RUNNING = WorkflowExecutionStatus.RUNNING
COMPLETED = WorkflowExecutionStatus.COMPLETED
CANCELED = WorkflowExecutionStatus.CANCELED


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(1_800_000_000 + seconds, UTC)


@dataclass
class Execution:
    id: str
    status: WorkflowExecutionStatus
    created: int
    closed: int | None = None
    memo_extra: dict[str, Any] = field(default_factory=dict)
    workflow_type: str = BATCH_WORKFLOW

    @property
    def start_time(self) -> datetime:
        return at(self.created)

    @property
    def close_time(self) -> datetime | None:
        return None if self.closed is None else at(self.closed)

    @property
    def raw_description(self) -> Any:
        class Info:
            cancel_requested = False

        class Raw:
            workflow_extended_info = Info()

        return Raw()

    async def memo(self) -> dict[str, Any]:
        return {"created_at": 1_800_000_000 + self.created, **self.memo_extra}


class Handle:
    def __init__(self, execution: Execution | None) -> None:
        self.execution = execution

    async def describe(self) -> Execution:
        if self.execution is None:
            from temporalio.service import RPCError, RPCStatusCode

            raise RPCError("not found", RPCStatusCode.NOT_FOUND, b"")
        return self.execution


class FakeClient:
    def __init__(self, executions: list[Execution]) -> None:
        self.executions = executions
        self.started: list[dict[str, Any]] = []

    async def list_workflows(self, query: str, **_: Any) -> AsyncIterator[Execution]:
        running = "ExecutionStatus = 'Running'" in query
        chosen = [e for e in self.executions if (e.status == RUNNING) == running]
        for execution in sorted(chosen, key=lambda e: e.closed or e.created, reverse=True):
            yield execution

    def get_workflow_handle(self, workflow_id: str) -> Handle:
        return Handle(next((e for e in self.executions if e.id == workflow_id), None))

    async def start_workflow(self, *_: Any, id: str, memo: dict[str, Any], **__: Any) -> None:
        self.started.append(memo)
        self.executions.append(Execution(id, RUNNING, created=0, memo_extra=memo))


class FakeTemporal:
    def __init__(self, client: FakeClient) -> None:
        self._client = client

    async def client(self) -> FakeClient:
        return self._client


def service(executions: list[Execution]) -> tuple[BatchService, FakeClient]:
    client = FakeClient(executions)
    temporal = cast(TemporalService, FakeTemporal(client))
    config = Settings(_env_file=None, GPU_PRICE_PER_HOUR=1.0)
    return BatchService(config, temporal, cast(Any, None)), client


# Idempotency-Key ---------------------------------------------------------------------------


async def test_a_key_reused_with_another_body_is_a_422_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches, client = service([])
    monkeypatch.setattr(BatchService, "_check_input_key", lambda self, key: None)
    request: dict[str, Any] = {
        "items": None,
        "input_object": "uploads/a.jsonl",
        "endpoint": "/v1/chat/completions",
        "defaults": {},
        "metadata": {"run": "1"},
    }
    first = await batches.submit(**request, idempotency_key="key-1")
    assert REQUEST_DIGEST in client.started[0]
    again = await batches.submit(**request, idempotency_key="key-1")
    assert again.id == first.id and len(client.started) == 1
    with pytest.raises(IdempotencyKeyReused) as raised:
        await batches.submit(**{**request, "metadata": {"run": "2"}}, idempotency_key="key-1")
    assert raised.value.status_code == 422
    assert "Idempotency-Key 'key-1' was already used for batch " + first.id in str(raised.value)
    assert len(client.started) == 1
    # A batch started before bodies were recorded is returned as before.
    client.executions[0].memo_extra.pop(REQUEST_DIGEST)
    old = await batches.submit(**{**request, "metadata": {"run": "3"}}, idempotency_key="key-1")
    assert old.id == first.id


# Listing -----------------------------------------------------------------------------------


def many(count: int) -> list[Execution]:
    return [
        Execution(
            f"batch_{n:03d}",
            COMPLETED if n % 3 else RUNNING,
            created=n,
            closed=n + 1 if n % 3 else None,
            memo_extra={
                "status": "completed" if n % 3 else "in_progress",
                "metadata": {"team": "a" if n % 2 else "b"},
            },
        )
        for n in range(count)
    ]


async def test_the_cursor_walks_every_batch_once_newest_first() -> None:
    batches, _ = service(many(2_500))
    seen: list[str] = []
    after = None
    while True:
        page, has_more = await batches.listing(1000, after)
        seen += [b.id for b in page]
        if not has_more:
            break
        after = page[-1].id
    assert seen == [f"batch_{n:03d}" for n in reversed(range(2_500))]


async def test_status_and_metadata_filters() -> None:
    batches, _ = service(many(30))
    page, has_more = await batches.listing(5, statuses=frozenset({"in_progress"}))
    assert [b.id for b in page] == ["batch_027", "batch_024", "batch_021", "batch_018", "batch_015"]
    assert has_more
    page, has_more = await batches.listing(
        100, statuses=frozenset({"completed"}), metadata={"team": "a"}
    )
    assert [b.id for b in page][:3] == ["batch_029", "batch_025", "batch_023"]
    assert all(b.status == "completed" and b.metadata == {"team": "a"} for b in page)
    assert not has_more
    assert await batches.listing(5, metadata={"team": "zzz"}) == ([], False)


async def test_an_unknown_cursor_is_a_400_naming_after() -> None:
    batches, _ = service(many(3))
    from app.core.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as raised:
        await batches.listing(5, "batch_nosuch")
    assert raised.value.param == "after"


# Routes ------------------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path))) as client:
        yield client


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("statuss=completed", "statuss"),
        ("metadata=team", "metadata"),
        ("limit=5&order=asc&zzz=1", "order, zzz"),
    ],
)
def test_unknown_list_parameters_are_a_400_naming_them(
    api: TestClient, query: str, named: str
) -> None:
    response = api.get(f"/batches?{query}")
    assert response.status_code == 400, response.text
    assert f"unknown query parameter(s): {named};" in response.json()["error"]["message"]


def test_a_bad_status_filter_is_a_400(api: TestClient) -> None:
    response = api.get("/batches?status=done")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("status: 'done' is not a batch status")


def test_known_list_parameters_reach_the_service(api: TestClient) -> None:
    response = api.get("/batches?limit=5&after=batch_x&status=completed,failed&metadata[team]=a")
    assert response.status_code == 503  # Temporal is away in this app: the query was accepted


LONG = "k" * 65


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({f"k{n}": "v" for n in range(17)}, "metadata: has 17 pairs; at most 16 are allowed"),
        ({LONG: "v"}, "metadata: key 'kkkkkkkkkkkkkkkkkkkk'... is 65 characters; at most 64"),
        ({"k": "v" * 513}, "metadata: value of 'k' is 513 characters; at most 512"),
    ],
)
def test_metadata_limits_are_openais(
    api: TestClient, metadata: dict[str, str], expected: str
) -> None:
    native = api.post("/batch", json={"input_key": "a.jsonl", "metadata": metadata})
    assert native.status_code == 400
    assert native.json()["error"]["message"] == expected
    openai = api.post(
        "/v1/batches",
        json={"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "metadata": metadata},
    )
    assert openai.status_code == 400
    assert openai.json()["error"]["param"] == "metadata"
    assert openai.json()["error"]["message"] == expected


def test_metadata_at_the_limits_is_accepted(api: TestClient) -> None:
    metadata = {f"{n:02d}" + "k" * 62: "v" * 512 for n in range(16)}
    response = api.post("/batch", json={"input_key": "a.jsonl", "metadata": metadata})
    assert response.status_code == 503  # past validation; Temporal is away in this app
