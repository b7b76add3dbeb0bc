"""Routes that need no server: authentication, the error shape, request validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.health import program_health
from kernel.config import Settings


def settings(tmp_path: Path, **values: object) -> Settings:
    base: dict[str, object] = {
        "AUTO_START_WORKERS": False,
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
        "MINIO_ENDPOINT": "127.0.0.1:1",
        "LLAMA_URL": "http://127.0.0.1:1",
        "SUPERVISOR_SOCKET": tmp_path / "none.sock",
    }
    base.update(values)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path, API_KEY="sekret"))) as client:
        yield client


def test_every_route_but_health_needs_the_key(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200
    for method, path in [
        ("get", "/queues"),
        ("get", "/batches"),
        ("get", "/batch/x"),
        ("post", "/batch"),
        ("post", "/process"),
        ("get", "/batch/x/results"),
    ]:
        response = getattr(keyed, method)(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "authentication_error"
    wrong = keyed.get("/queues", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "invalid API key"


def test_with_the_key_requests_reach_validation(keyed: TestClient) -> None:
    response = keyed.post("/batch", json={"items": []}, headers={"Authorization": "Bearer sekret"})
    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": 400, "type": "invalid_request_error", "message": "body: 'items' is empty"}
    }


def test_health_reports_each_dependency_down_quickly(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        health = client.get("/health").json()
    assert health["status"] == "degraded"
    for name in ("temporal", "s3", "llama", "supervisor"):
        assert health["checks"][name]["status"] == "error", name
        assert health["checks"][name]["message"]


def test_unavailable_temporal_is_a_503_with_the_error_shape(tmp_path: Path) -> None:
    with TestClient(create_app(settings(tmp_path))) as client:
        response = client.get("/batch/batch_x")
    assert response.status_code == 503
    assert "Temporal at 127.0.0.1:1 is not reachable" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("state", "autostart", "status"),
    [
        ("RUNNING", True, "ok"),
        ("STARTING", False, "ok"),
        ("STOPPED", False, "ok"),
        ("EXITED", False, "ok"),
        ("STOPPED", True, "error"),
        ("FATAL", False, "error"),
        ("BACKOFF", True, "error"),
    ],
)
def test_program_health(state: str, autostart: bool, status: str) -> None:
    assert program_health(state, autostart)["status"] == status
