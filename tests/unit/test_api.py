"""Routes that need no server: authentication, the error shape, request validation."""

from __future__ import annotations

import json
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
    with TestClient(create_app(settings(tmp_path, API_KEY="sekret-0123456789"))) as client:
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
    response = keyed.post(
        "/batch", json={"items": []}, headers={"Authorization": "Bearer sekret-0123456789"}
    )
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


def test_health_without_the_key_says_only_whether_the_api_is_up(keyed: TestClient) -> None:
    anonymous = keyed.get("/health")
    assert anonymous.status_code == 200
    assert anonymous.json() in ({"status": "ok"}, {"status": "degraded"})
    wrong = keyed.get("/health", headers={"Authorization": "Bearer not-the-right-key"})
    assert set(wrong.json()) == {"status"}
    full = keyed.get("/health", headers={"Authorization": "Bearer sekret-0123456789"}).json()
    assert set(full["checks"]) == {"temporal", "s3", "llama", "supervisor"}
    assert full["mode"] == "hybrid"


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    limit = 4096
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"items": ['
        for _ in range(1000):  # ~100 KB, far past the limit; no Content-Length
            sent += 100
            yield b'{"custom_id": "x", "prompt": "' + b"y" * 70 + b'"},'
        yield b"{}]}"

    with TestClient(create_app(settings(tmp_path, MAX_REQUEST_BYTES=limit))) as client:
        response = client.post(
            "/batch", content=chunks(), headers={"Content-Type": "application/json"}
        )
        sized = client.post("/batch", content=b"x" * (limit + 1))
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["type"] == "payload_too_large"
    assert "the limit is 4096 (MAX_REQUEST_BYTES)" in error["message"]
    assert sized.status_code == 413
    assert "request body is 4097 bytes" in sized.json()["error"]["message"]


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        ({"padding": "y" * 1_000_001}, "merged into every line, whose limit is 1000000 bytes"),
        ({"x": "\ud800"}, "defaults holds a lone surrogate"),
    ],
)
def test_defaults_that_cannot_fit_a_line_are_a_400(
    tmp_path: Path, defaults: dict[str, str], expected: str
) -> None:
    body = {"items": [{"custom_id": "a", "prompt": "x"}], "defaults": defaults}
    with TestClient(create_app(settings(tmp_path, MAX_REQUEST_BYTES=4_000_000))) as client:
        response = client.post(
            "/batch", content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]["message"]


def test_a_body_nested_too_deep_is_a_400(tmp_path: Path) -> None:
    deep = b'{"items": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    with TestClient(create_app(settings(tmp_path, MAX_REQUEST_BYTES=4_000_000))) as client:
        response = client.post("/batch", content=deep, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
