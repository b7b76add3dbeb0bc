"""./deploy_vast.sh end to end: over SSH to a local sshd, the stack boots under supervisord.

One stack is deployed for the whole module and the tests run in order on it (the machine has
few cores): first deploy, idempotent redeploy, dry run, code changes, a broken service, two
deploys at once, the tunnel, status/logs/ssh, an .env change, and finally stop.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.stack import free_port
from tests.e2e.conftest import (
    API_KEY,
    MINIO_SECRET_KEY,
    Deployer,
    DeployResult,
    port_is_open,
    wait_for,
)

pytestmark = pytest.mark.e2e

MARKER = "data/e2e-marker.txt"


@dataclass
class Deployment:
    deployer: Deployer
    first: DeployResult
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def deployed(deployer: Deployer) -> Iterator[Deployment]:
    """The first deploy (traced, to prove secrets stay out of traces), shared by the module."""
    result = deployer.run(DEPLOY_TRACE="1")
    assert result.returncode == 0, result.output
    yield Deployment(deployer, result, {"first deploy": result.seconds})


def health(deployer: Deployer, base_url: str | None = None) -> dict[str, Any]:
    # /health gives mode and checks only to a caller with the key.
    request = urllib.request.Request(
        f"{base_url or deployer.api_url}/health", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        report: dict[str, Any] = json.load(response)
    return report


def append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def assert_fails_with(result: DeployResult, fragment: str) -> None:
    assert result.returncode != 0, result.output
    assert len(result.errors) == 1, result.stderr
    assert fragment in result.errors[0], result.stderr


# --- before anything is deployed ------------------------------------------------------------


def test_dry_run_on_a_fresh_instance_creates_nothing(deployer: Deployer) -> None:
    result = deployer.run("--dry-run")

    assert result.returncode == 0, result.output
    assert "[dry-run] would take the deploy lock" in result.stdout
    assert "would start the stack" in result.stderr
    assert "would change: " in result.stderr
    assert not deployer.remote_dir.exists(), "a dry run created REMOTE_DIR"


# --- the shared deployment -------------------------------------------------------------------


def test_first_deploy_boots_the_stack_and_passes_the_health_gate(deployed: Deployment) -> None:
    deployer, result = deployed.deployer, deployed.first

    assert "healthy after" in result.stderr
    assert "done: started the stack" in result.stderr
    assert f"Deployed {deployer.settings['VAST_USER']}@127.0.0.1" in result.stdout
    assert "tunnel" in result.stdout and "/docs" in result.stdout
    report = health(deployer)
    assert report["status"] == "ok", report
    assert report["mode"] == "local"
    programs = deployer.program_pids()
    for name in ("fastapi", "llama", "temporal", "minio", "web"):
        assert programs[name], f"{name} is not running: {programs}"
    assert not programs["worker-cpu"] and not programs["worker-gpu"], "workers start on demand"
    # .env arrives byte for byte (quotes, spaces, $ and backticks) with mode 600.
    remote_env = deployer.remote_dir / ".env"
    assert remote_env.read_bytes() == deployer.env_file.read_bytes()
    assert stat.S_IMODE(remote_env.stat().st_mode) == 0o600
    # Host keys go to the project's own known_hosts.
    known_hosts = (deployer.source / ".deploy" / "known_hosts").read_text()
    assert f"[127.0.0.1]:{deployer.sshd.port}" in known_hosts
    # Nothing local-only was synced.
    for path in (".git", ".venv", ".deploy/known_hosts"):
        assert not (deployer.remote_dir / path).exists(), path
    # The traced run printed neither secret (DeployResult checks every run) but did trace.
    assert "+ " in result.stderr and API_KEY not in result.output


def test_redeploy_without_change_is_idempotent_and_fast(
    deployed: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployer = deployed.deployer
    (deployer.remote_dir / MARKER).write_text("kept across deploys\n")
    before = deployer.program_pids()
    env_mtime = (deployer.remote_dir / ".env").stat().st_mtime

    result = deployer.run()

    assert result.returncode == 0, result.output
    assert "sync: code is up to date" in result.stderr
    assert ".env is up to date" in result.stderr
    assert "done: nothing changed" in result.stderr
    assert deployer.program_pids() == before, "a no-change redeploy restarted something"
    assert (deployer.remote_dir / ".env").stat().st_mtime == env_mtime
    assert (deployer.remote_dir / MARKER).read_text() == "kept across deploys\n"
    deployed.timings["no-change redeploy"] = result.seconds
    with capsys.disabled():
        print(
            f"\n[e2e] first deploy to healthy: {deployed.timings['first deploy']:.1f}s; "
            f"no-change redeploy: {result.seconds:.1f}s"
        )


def test_dry_run_changes_nothing_remotely(deployed: Deployment) -> None:
    deployer = deployed.deployer
    append(
        deployer.source / "app" / "api" / "routes" / "queues.py",
        "\n# e2e: changed by the dry-run test\n",
    )
    requirements = deployer.source / "requirements.instance.txt"
    pinned, pinned_stat = requirements.read_text(), requirements.stat()
    requirements.write_text(pinned.replace("httpx==", "httpx==0.0.1+e2e\n# was httpx=="))
    env_before = deployer.env_file.read_text()
    append(deployer.env_file, "LOG_LEVEL=DEBUG\n")
    tree, pids = deployer.remote_tree(), deployer.program_pids()
    try:
        result = deployer.run("--dry-run")
    finally:
        requirements.write_text(pinned)
        os.utime(requirements, ns=(pinned_stat.st_atime_ns, pinned_stat.st_mtime_ns))
        deployer.env_file.write_text(env_before)

    assert result.returncode == 0, result.output
    sync = next(line for line in result.stderr.splitlines() if line.startswith("[deploy] sync:"))
    assert "would change" in sync and "app/api/routes/queues.py" in sync, sync
    assert "it differs from the instance's copy" in result.stdout
    assert "would restart the stack, .env changed" in result.stderr
    assert "differs from requirements.instance.txt" in result.stderr
    assert "httpx==0.0.1+e2e" in result.stderr
    assert deployer.remote_tree() == tree, "the dry run changed files on the instance"
    assert deployer.program_pids() == pids, "the dry run restarted something"


def test_changed_app_file_restarts_fastapi_and_nothing_else(deployed: Deployment) -> None:
    deployer = deployed.deployer
    before = deployer.program_pids()

    result = deployer.run()  # deploys the change made by the dry-run test

    assert result.returncode == 0, result.output
    assert "1 file(s) changed: app/api/routes/queues.py" in result.stderr
    assert "done: restarted fastapi" in result.stderr
    after = deployer.program_pids()
    assert after["fastapi"] and after["fastapi"] != before["fastapi"]
    assert {k: v for k, v in after.items() if k != "fastapi"} == {
        k: v for k, v in before.items() if k != "fastapi"
    }
    assert (
        "changed by the dry-run test"
        in (deployer.remote_dir / "app/api/routes/queues.py").read_text()
    )
    assert health(deployer)["status"] == "ok"
    assert (deployer.remote_dir / MARKER).exists()


def test_changed_worker_code_restarts_only_the_running_worker(deployed: Deployment) -> None:
    deployer = deployed.deployer
    started = deployer.instance_script("supervisorctl.sh", "start", "worker-cpu")
    assert "started" in started.stdout + started.stderr, started
    before = deployer.program_pids()
    assert before["worker-cpu"] and not before["worker-gpu"]
    append(deployer.source / "workers" / "activities" / "batch_io.py", "\n# e2e: worker change\n")

    result = deployer.run()

    assert result.returncode == 0, result.output
    assert "done: restarted worker-cpu" in result.stderr
    after = deployer.program_pids()
    assert after["worker-cpu"] and after["worker-cpu"] != before["worker-cpu"]
    assert not after["worker-gpu"], "a stopped worker must stay stopped"
    for name in ("fastapi", "llama", "temporal", "minio", "web"):
        assert after[name] == before[name], f"{name} was restarted"
    deployer.instance_script("supervisorctl.sh", "stop", "worker-cpu")


def test_a_service_that_cannot_start_fails_the_gate_with_its_log(deployed: Deployment) -> None:
    deployer = deployed.deployer
    main_py = deployer.source / "app" / "main.py"
    original = main_py.read_text()
    main_py.write_text(original + '\nraise RuntimeError("e2e: the API is broken on purpose")\n')
    try:
        broken = deployer.run(HEALTH_TIMEOUT="120")
    finally:
        main_py.write_text(original)

    assert_fails_with(broken, "are not healthy (fastapi ")
    assert (
        "fastapi failed to start (FATAL)" in broken.stderr
        or "fastapi keeps exiting" in broken.stderr
    )
    assert "fastapi.log" in broken.stderr
    assert "RuntimeError: e2e: the API is broken on purpose" in broken.stderr

    fixed = deployer.run()  # the fix restarts fastapi from FATAL
    assert fixed.returncode == 0, fixed.output
    assert "started fastapi" in fixed.stderr
    assert health(deployer)["status"] == "ok"


@dataclass
class Watched:
    process: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)

    def when(self, fragment: str) -> float:
        return next(t for t, line in self.lines if fragment in line)


def watch(deployer: Deployer, *args: str, **env: str) -> tuple[Watched, threading.Thread]:
    process = deployer.popen(*args, **env)
    watched = Watched(process)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            watched.lines.append((time.monotonic(), line.rstrip("\n")))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return watched, thread


def test_two_deploys_at_once_are_serialised(deployed: Deployment) -> None:
    deployer = deployed.deployer
    append(deployer.source / "app" / "api" / "routes" / "queues.py", "# e2e: concurrent deploys\n")

    runs = [watch(deployer) for _ in range(2)]
    for watched, thread in runs:
        assert watched.process.wait(timeout=300) == 0, "\n".join(line for _, line in watched.lines)
        thread.join(timeout=10)

    (a, _), (b, _) = runs
    intervals = sorted((w.when("lock: acquired"), w.when("lock: released")) for w in (a, b))
    assert intervals[0][1] <= intervals[1][0], f"lock held by both at once: {intervals}"
    waited = [
        w for w in (a, b) if any("another deploy holds the instance" in line for _, line in w.lines)
    ]
    # Started together, the second normally finds the first holding the lock and says so
    # (the held-lock test below checks the waiting itself, deterministically).
    assert len(waited) <= 1, "both deploys claim to have waited for the other"
    assert health(deployer)["status"] == "ok"


def test_a_held_lock_makes_the_deploy_wait_then_time_out(deployed: Deployment) -> None:
    deployer = deployed.deployer
    target = deployer.remote_dir / "app" / "api" / "routes" / "queues.py"
    append(deployer.source / "app" / "api" / "routes" / "queues.py", "# e2e: held lock\n")
    with open(deployer.remote_dir / ".deploy" / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another deploy holds the instance

        timed_out = deployer.run(DEPLOY_LOCK_TIMEOUT="2")
        assert_fails_with(timed_out, "another deploy still holds the lock")
        assert "held lock" not in target.read_text(), "code was synced without the lock"

        waiting, thread = watch(deployer)
        wait_for(
            lambda: any("waiting up to" in line for _, line in waiting.lines),
            60,
            "the deploy to wait",
        )
        time.sleep(1)
        assert waiting.process.poll() is None
        assert "held lock" not in target.read_text(), "code was synced without the lock"
    # The lock is released: the waiting deploy goes on.
    assert waiting.process.wait(timeout=300) == 0, waiting.lines
    thread.join(timeout=10)
    assert "held lock" in target.read_text()


def test_tunnel_forwards_the_api_and_dashboard(deployed: Deployment) -> None:
    deployer = deployed.deployer
    api_port, web_port, console_port = free_port(), free_port(), free_port()
    process = deployer.popen(
        "tunnel",
        TUNNEL_API_PORT=str(api_port),
        TUNNEL_WEB_PORT=str(web_port),
        TUNNEL_S3_CONSOLE_PORT=str(console_port),
    )
    try:
        wait_for(lambda: port_is_open(api_port) or process.poll() is not None, 30, "the tunnel")
        assert process.poll() is None, process.communicate()
        report = health(deployer, f"http://127.0.0.1:{api_port}")
        assert report["status"] == "ok" and report["mode"] == "local"
        with pytest.raises(urllib.error.HTTPError) as denied:  # the API key is enforced
            urllib.request.urlopen(f"http://127.0.0.1:{api_port}/queues", timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(
            f"http://127.0.0.1:{api_port}/queues", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        assert port_is_open(web_port)
    finally:
        process.terminate()  # by PID: the script execs ssh, so this is the ssh process
        process.communicate(timeout=15)
    assert not port_is_open(api_port)


def test_status_logs_and_ssh(deployed: Deployment) -> None:
    deployer = deployed.deployer

    status = deployer.run("status")
    assert status.returncode == 0, status.output
    assert "supervisord: running" in status.stdout
    assert "health: ok" in status.stdout
    assert "fastapi" in status.stdout and "RUNNING" in status.stdout

    logs = deployer.run("logs", "fastapi", "-n", "5")
    assert logs.returncode == 0, logs.output
    assert 0 < len(logs.stdout.splitlines()) <= 5

    every = deployer.run("logs", "-n", "1")
    assert every.returncode == 0 and "fastapi.log <==" in every.stdout

    pwd = deployer.run("ssh", "pwd")
    assert pwd.returncode == 0 and pwd.stdout.strip() == str(deployer.remote_dir)

    # Arguments reach the instance as words, never as shell code.
    echo = deployer.run("ssh", "echo", "$(touch pwned)", "a;b", "'q'")
    assert echo.stdout.strip() == "$(touch pwned) a;b 'q'"
    assert not (deployer.remote_dir / "pwned").exists()

    unknown = deployer.run("logs", "nope")
    assert_fails_with(unknown, "logs: unknown program 'nope'")


def test_env_change_restarts_the_stack_and_keeps_data(deployed: Deployment) -> None:
    deployer = deployed.deployer
    before = deployer.program_pids()
    append(deployer.env_file, "WORKER_IDLE_EXIT_SECONDS=120\n")

    result = deployer.run()

    assert result.returncode == 0, result.output
    assert "done: restarted the stack (.env changed)" in result.stderr
    after = deployer.program_pids()
    for name in ("fastapi", "llama", "temporal", "minio", "web"):
        assert after[name] and after[name] != before[name], f"{name} kept running with the old .env"
    assert (deployer.remote_dir / ".env").read_bytes() == deployer.env_file.read_bytes()
    assert (deployer.remote_dir / MARKER).read_text() == "kept across deploys\n"
    assert (deployer.remote_dir / "data" / "temporal").is_dir()
    assert MINIO_SECRET_KEY not in result.output


def test_stop_stops_every_service_and_keeps_data(deployed: Deployment) -> None:
    deployer = deployed.deployer
    pid = int((deployer.remote_dir / "data" / "supervisord.pid").read_text())

    result = deployer.run("stop")

    assert result.returncode == 0, result.output
    assert not Path(f"/proc/{pid}").exists(), "supervisord still runs"
    status = deployer.run("status")
    assert status.returncode != 0 and "supervisord: not running" in status.stdout
    assert (deployer.remote_dir / MARKER).exists()
    assert not port_is_open(int(deployer.settings["API_PORT"]))
