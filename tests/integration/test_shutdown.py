"""A worker stopped at any moment exits 0, without an abort, against the real stack: as soon
as it catches SIGTERM, while it connects, right after its metrics come up, while it polls;
and under supervisord a SIGTERM from outside is an expected exit (it stays stopped), a
`supervisorctl stop` is quick."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.stack import REPO_ROOT, Stack, free_port
from tests.unit.test_worker_shutdown import wait_until_caught

pytestmark = pytest.mark.integration

CRASH_SIGNS = ("Traceback", "Fatal Python error", "panicked", "Aborted")


def spawn_worker(stack: Stack, log: Path, **extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = stack.process_env(
        {
            "CPU_TASK_QUEUE": f"shutdown-{os.getpid()}",
            "WORKER_CPU_METRICS_PORT": str(port),
            "WORKER_IDLE_EXIT_SECONDS": "0",
            **extra,
        }
    )
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers", "--queue", "cpu"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return worker, port


def wait_for_metrics(worker: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            text = ""
        if "temporal_" in text and "poll" in text:
            return
        assert worker.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no metrics after 90s\n{log.read_text()}")


def stop_and_check(worker: subprocess.Popen[bytes], log: Path, within: float = 60) -> str:
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=within)
    finally:
        worker.kill()
    output = log.read_text(errors="replace")
    assert worker.returncode == 0, f"exit {worker.returncode}\n{output}"
    assert not [sign for sign in CRASH_SIGNS if sign in output], output
    assert time.monotonic() - started < within
    return output


@pytest.mark.parametrize("moment", ["caught", "metrics-up", "polling"])
def test_a_worker_stopped_at_any_moment_exits_0(stack: Stack, tmp_path: Path, moment: str) -> None:
    for attempt in range(3):
        log = tmp_path / f"worker-{attempt}.log"
        worker, port = spawn_worker(stack, log)
        if moment == "caught":
            wait_until_caught(worker.pid, signal.SIGTERM, timeout=60)
        else:
            wait_for_metrics(worker, port, log)
        if moment == "polling":
            time.sleep(1.5)
        output = stop_and_check(worker, log)
        if moment != "caught":
            assert "worker" in output and "stopped" in output, output


def test_a_worker_stopped_while_temporal_does_not_answer_exits_0(
    stack: Stack, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    worker, _ = spawn_worker(stack, log, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    deadline = time.monotonic() + 60
    while "not reachable yet" not in log.read_text():
        assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    output = stop_and_check(worker, log, within=15)
    assert "stop requested while connecting to Temporal" in output, output


def supervisord_log(stack: Stack) -> str:
    return (stack.log_dir / "supervisord.log").read_text(errors="replace")


def test_supervisord_keeps_a_sigtermed_worker_stopped(stack: Stack) -> None:
    """A SIGTERM that does not come from supervisord (an operator's kill, a box's shutdown)
    is an expected exit: code 0, in supervisord.conf's exitcodes, so autorestart=unexpected
    leaves the worker stopped rather than counting a crash."""
    control = stack.supervisor()
    control.start_sync("worker-cpu")
    pid = control.programs_sync()["worker-cpu"].pid
    assert pid > 0
    wait_until_caught(pid, signal.SIGTERM, timeout=30)
    before = supervisord_log(stack)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    expected = "exited: worker-cpu (exit status 0; expected)"
    while expected not in supervisord_log(stack)[len(before) :]:
        assert time.monotonic() < deadline, supervisord_log(stack)[len(before) :]
        time.sleep(0.2)
    after = supervisord_log(stack)[len(before) :]
    assert "not expected" not in after, after


def test_supervisorctl_stop_is_quick_and_clean(stack: Stack) -> None:
    control = stack.supervisor()
    control.start_sync("worker-cpu")
    before = supervisord_log(stack)
    started = time.monotonic()
    control.stop_sync("worker-cpu")
    took = time.monotonic() - started
    after = supervisord_log(stack)[len(before) :]
    assert "stopped: worker-cpu (exit status 0)" in after, after
    # Within stopwaitsecs (30 s), after which supervisord would SIGKILL it.
    assert took < 30, after
    assert control.programs_sync()["worker-cpu"].state == "STOPPED"
