"""scripts/container_smoke.sh against a small in-process stand-in for the API.

The stand-in speaks the API contract (the README's API section) and can be told to misbehave,
so each check of the smoke script is shown to pass on a good deployment and to fail, with a
one-line reason, on a bad one. CI runs the same script against the real app container
(.github/workflows/ci-minimal-image.yml).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "container_smoke.sh"
API_KEY = "smoke-test-key"


@dataclass
class FakeApi:
    """What the stand-in answers; tests change the fields to inject faults."""

    health_degraded_polls: int = 0
    health_always_degraded: bool = False
    polls_until_done: int = 1
    never_finishes: bool = False
    final_status: str = "completed"
    results_mode: str = "ok"  # ok | duplicate | missing | failed_line
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    health_calls: int = 0


class Handler(BaseHTTPRequestHandler):
    api: FakeApi

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {API_KEY}":
            return True
        self._send(401, {"error": {"code": 401, "type": "auth", "message": "bad API key"}})
        return False

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        api = self.api
        if self.path == "/health":
            api.health_calls += 1
            degraded = api.health_always_degraded or (api.health_calls <= api.health_degraded_polls)
            status = "degraded" if degraded else "ok"
            llama = (
                {"status": "error", "message": "loading model"} if degraded else {"status": status}
            )
            self._send(200, {"status": status, "dependencies": {"llama": llama}})
            return
        if not self._authorized():
            return
        if self.path == "/queues":
            self._send(200, {"queues": {"cpu": {"pollers": 0}, "gpu": {"pollers": 0}}})
            return
        parts = self.path.strip("/").split("/")
        if len(parts) >= 2 and parts[0] == "batch" and parts[1] in api.batches:
            batch = api.batches[parts[1]]
            if len(parts) == 2:
                batch["polls"] += 1
                done = not api.never_finishes and batch["polls"] > api.polls_until_done
                total = len(batch["ids"])
                status = api.final_status if done else "in_progress"
                completed = total if done and status == "completed" else 0
                failed = total if done and status == "failed" else 0
                counts = {"total": total, "completed": completed, "failed": failed}
                self._send(200, {"id": parts[1], "status": status, "request_counts": counts})
                return
            if parts[2:] == ["results"]:
                self._send(200, self._results(batch["ids"]), "application/x-ndjson")
                return
        self._send(404, {"error": {"code": 404, "type": "not_found", "message": self.path}})

    def _results(self, ids: list[str]) -> str:
        mode = self.api.results_mode
        if mode == "duplicate":
            ids = ids + ids[:1]
        elif mode == "missing":
            ids = ids[1:]
        lines = []
        for custom_id in ids:
            failed = mode == "failed_line" and custom_id == ids[0]
            response: dict[str, Any] = {
                "status_code": 500 if failed else 200,
                "request_id": "r",
                "body": {},
            }
            error = {"message": "boom"} if failed else None
            line = {"id": "o", "custom_id": custom_id, "response": response, "error": error}
            lines.append(json.dumps(line))
        return "\n".join(lines) + "\n"

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if not self._authorized():
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        if self.path != "/batch" or body.get("defaults", {}).get("max_tokens") != 8:
            self._send(400, {"error": {"code": 400, "type": "invalid", "message": "bad body"}})
            return
        batch_id = f"batch_{len(self.api.batches) + 1}"
        ids = [item["custom_id"] for item in body["items"]]
        self.api.batches[batch_id] = {"ids": ids, "polls": 0}
        self._send(202, {"id": batch_id, "status": "validating"})


@pytest.fixture
def fake_api() -> Iterator[tuple[str, FakeApi]]:
    api = FakeApi()
    handler = type("BoundHandler", (Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", api
    finally:
        server.shutdown()
        server.server_close()


def run_smoke(
    *args: str, timeout: int = 20, health_wait: int = 5
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "SMOKE_TIMEOUT": str(timeout),
        "SMOKE_POLL_INTERVAL": "1",
        "SMOKE_HEALTH_WAIT": str(health_wait),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout + 30,
        check=False,
    )


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if "FAIL" in line]
    assert len(lines) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == lines[0]
    return lines[0]


def test_passes_on_a_healthy_deployment(fake_api: tuple[str, FakeApi]) -> None:
    url, api = fake_api
    api.health_degraded_polls = 1  # the API is up before llama-server has loaded the model
    result = run_smoke(url, API_KEY)
    assert result.returncode == 0, result.stderr
    assert "OK: batch batch_1, 3/3 results" in result.stdout
    assert len(api.batches["batch_1"]["ids"]) == 3


def test_duplicated_custom_id_fails(fake_api: tuple[str, FakeApi]) -> None:
    url, api = fake_api
    api.results_mode = "duplicate"
    result = run_smoke(url, API_KEY)
    assert result.returncode == 1
    assert "duplicated" in failure_line(result)


def test_missing_custom_id_fails(fake_api: tuple[str, FakeApi]) -> None:
    url, api = fake_api
    api.results_mode = "missing"
    result = run_smoke(url, API_KEY)
    assert result.returncode == 1
    assert "missing smoke-" in failure_line(result)


def test_failed_request_line_fails(fake_api: tuple[str, FakeApi]) -> None:
    url, api = fake_api
    api.results_mode = "failed_line"
    result = run_smoke(url, API_KEY)
    assert result.returncode == 1
    assert "failed requests" in failure_line(result)


def test_failed_batch_fails(fake_api: tuple[str, FakeApi]) -> None:
    url, api = fake_api
    api.final_status = "failed"
    result = run_smoke(url, API_KEY)
    assert result.returncode == 1
    assert "ended 'failed'" in failure_line(result)


def test_wrong_api_key_fails(fake_api: tuple[str, FakeApi]) -> None:
    url, _ = fake_api
    result = run_smoke(url, "not-the-key")
    assert result.returncode == 1
    assert "HTTP 401" in failure_line(result)


def test_degraded_health_names_the_dependency(fake_api: tuple[str, FakeApi]) -> None:
    url, api = fake_api
    api.health_always_degraded = True
    result = run_smoke(url, API_KEY, health_wait=2)
    assert result.returncode == 1
    line = failure_line(result)
    assert "llama=error (loading model)" in line


def test_total_time_is_bounded(fake_api: tuple[str, FakeApi]) -> None:
    url, api = fake_api
    api.never_finishes = True
    started = time.monotonic()
    result = run_smoke(url, API_KEY, timeout=5)
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert "still 'in_progress'" in failure_line(result)


def test_no_server_fails_with_a_reason() -> None:
    result = run_smoke("http://127.0.0.1:9", API_KEY, timeout=3)
    assert result.returncode == 1
    assert "no answer" in failure_line(result)


def test_usage_errors_exit_2() -> None:
    assert run_smoke().returncode == 2
    assert run_smoke("127.0.0.1:8000").returncode == 2
