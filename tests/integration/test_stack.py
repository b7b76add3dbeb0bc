"""The foundation against the real servers: launcher, supervisord, on-demand workers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from temporalio.client import Client

from harness.stack import REPO_ROOT, Stack, free_port
from kernel.inputs import BATCH_WORKFLOW, BatchInput, BatchResult
from kernel.keys import input_key

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_workers(stack: Stack) -> None:
    stack.supervisorctl("stop", "worker-cpu", "worker-gpu")
    stack.wait_program_state("worker-cpu", {"STOPPED", "EXITED"})
    stack.wait_program_state("worker-gpu", {"STOPPED", "EXITED"})


def test_stack_boots_healthy_with_every_check_ok(stack: Stack) -> None:
    # /health counts a program in its first seconds (STARTING) as up; give each its startsecs.
    for name in ("fastapi", "llama", "temporal", "minio", "web"):
        stack.wait_program_state(name, {"RUNNING"}, timeout=30)
    health = stack.health()
    assert health["status"] == "ok", health
    assert health["mode"] == "local"
    checks = health["checks"]
    assert {name: c["status"] for name, c in checks.items()} == {
        "temporal": "ok",
        "s3": "ok",
        "llama": "ok",
        "supervisor": "ok",
    }
    assert checks["llama"]["slots"] == 4
    programs = checks["supervisor"]["programs"]
    for name in ("fastapi", "llama", "temporal", "minio", "web"):
        assert programs[name]["state"] == "RUNNING", (name, programs[name])
    print(f"\nstart_services.sh to healthy: {stack.started_seconds:.1f}s")


def test_docs_and_openapi_are_served(stack: Stack) -> None:
    assert stack.http.get("/docs").status_code == 200
    spec = stack.http.get("/openapi.json").json()
    for path in ("/health", "/queues", "/batch", "/batch/{batch_id}", "/process"):
        assert path in spec["paths"], path


def test_health_answers_fast_when_a_dependency_hangs(stack: Stack) -> None:
    """A llama-server that accepts connections but never answers must not stall /health."""
    with socketserver_that_never_answers() as port:
        env = stack.process_env(
            {"LLAMA_URL": f"http://127.0.0.1:{port}", "API_PORT": str(free_port())}
        )
        api = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import httpx

            url = f"http://127.0.0.1:{env['API_PORT']}/health"
            wait_for(lambda: _answers(url), 30, what="second API")
            started = time.monotonic()
            health = httpx.get(url, timeout=30).json()
            elapsed = time.monotonic() - started
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(timeout=30)
    assert health["checks"]["llama"]["status"] == "error"
    assert health["status"] == "degraded"
    assert elapsed < 5, elapsed


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


class socketserver_that_never_answers:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_on_demand_worker_polls_then_exits_idle_and_stays_stopped(stack: Stack) -> None:
    stop_workers(stack)
    queue = stack.env["CPU_TASK_QUEUE"]
    started = time.monotonic()
    from pathlib import Path

    from kernel.supervisor import SupervisorControl

    control = SupervisorControl(Path(stack.env["DATA_DIR"]) / "supervisor.sock")
    call_started = time.monotonic()
    result = asyncio.run(control.start("worker-cpu"))
    call_ms = (time.monotonic() - call_started) * 1000
    assert result.outcome == "started"
    again = asyncio.run(control.start("worker-cpu"))
    assert again.outcome == "already_running"

    def polling() -> bool:
        report = stack.http.get("/queues").json()["queues"]["cpu"]
        return report["task_queue"] == queue and report["live_pollers"] >= 1

    wait_for(polling, 30, interval=0.05, what="worker-cpu to poll")
    to_polling = time.monotonic() - started
    print(f"\nstart call: {call_ms:.1f} ms; start call to polling: {to_polling:.2f}s")
    assert call_ms < 500

    # Idle for WORKER_IDLE_EXIT_SECONDS: exits with code 0, and supervisord leaves it.
    stack.wait_program_state("worker-cpu", {"EXITED"}, timeout=60)
    status = stack.supervisorctl("status", "worker-cpu")
    assert "EXITED" in status
    time.sleep(3)
    assert "EXITED" in stack.supervisorctl("status", "worker-cpu")
    log = (stack.log_dir / "worker-cpu.log").read_text()
    assert "idle for" in log


def test_killed_worker_is_restarted(stack: Stack) -> None:
    stack.supervisorctl("start", "worker-gpu")
    stack.wait_program_state("worker-gpu", {"RUNNING"})
    pid = stack.program_pid("worker-gpu")
    assert pid > 0
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: stack.program_pid("worker-gpu") not in (0, pid), 30, what="worker-gpu restart")
    stack.wait_program_state("worker-gpu", {"RUNNING"})


def test_sigterm_stops_a_worker_gracefully(stack: Stack) -> None:
    stack.supervisorctl("start", "worker-gpu")
    stack.wait_program_state("worker-gpu", {"RUNNING"})
    started = time.monotonic()
    out = stack.supervisorctl("stop", "worker-gpu")
    assert "stopped" in out
    assert time.monotonic() - started < 30
    assert "STOPPED" in stack.supervisorctl("status", "worker-gpu")


def test_reconciler_starts_stopped_workers_for_waiting_work(stack: Stack) -> None:
    """Work submitted straight to Temporal (no API start call) still gets workers."""
    stop_workers(stack)
    env = stack.env
    s3 = stack.s3()
    batch_id = f"batch_reconcile_{os.getpid()}"
    lines = b"".join(
        json.dumps({"custom_id": f"r{i}", "prompt": "hello", "max_tokens": 4}).encode() + b"\n"
        for i in range(5)
    )
    s3.put_object("llm-batch", input_key(batch_id), io.BytesIO(lines), len(lines))

    async def submit_and_wait() -> dict[str, int]:
        client = await Client.connect(env["TEMPORAL_ADDRESS"])
        handle = await client.start_workflow(
            BATCH_WORKFLOW,
            BatchInput(
                batch_id=batch_id,
                bucket="llm-batch",
                input_key=input_key(batch_id),
                gpu_task_queue=env["GPU_TASK_QUEUE"],
            ),
            id=batch_id,
            task_queue=env["CPU_TASK_QUEUE"],
            result_type=BatchResult,
        )
        result = await asyncio.wait_for(handle.result(), 120)
        return {"completed": result.completed, "failed": result.failed}

    assert asyncio.run(submit_and_wait()) == {"completed": 5, "failed": 0}
    log = (stack.log_dir / "fastapi.log").read_text()
    assert "reconciler:" in log and "started worker-cpu" in log and "started worker-gpu" in log


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("API_PORT", "eighty", "API_PORT"),
        ("DEPLOY_MODE", "cloud", "DEPLOY_MODE"),
        ("TEMPORAL_ADDRESS", "no-port", "TEMPORAL_ADDRESS"),
        ("MINIO_BUCKET", "Bad_Bucket", "MINIO_BUCKET"),
        ("API_HOST", "0.0.0.0", "API_KEY"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_variable(
    stack: Stack, variable: str, value: str, expected: str
) -> None:
    result = stack.script(
        "start_services.sh", "--dry-run", check=False, **{variable: value, "API_KEY": ""}
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and "error" in lines[0]


def test_start_twice_is_harmless(stack: Stack) -> None:
    before = stack.program_pid("fastapi")
    result = stack.script("start_services.sh")
    assert "already running" in result.stderr
    assert stack.program_pid("fastapi") == before
    assert stack.health()["status"] == "ok"
