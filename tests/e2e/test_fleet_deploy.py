"""`./deploy_vast.sh fleet` end to end, in hybrid mode: two "instances" (two private sshd's
on this machine, each with its own REMOTE_DIR, ports and slot count) and one control plane
(Temporal and S3 on "the laptop", reached by the members only through the fleet's tunnels).

One fleet deploy boots both, `fleet tunnel` connects them to the control plane, a batch runs
to completion across both boxes with every custom_id exactly once, `fleet status` shows both
healthy and `fleet stop` stops both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.stack import REPO_ROOT, free_port, free_port_block
from tests.e2e.conftest import (
    API_KEY,
    INSTANCE_VENV,
    MINIO_SECRET_KEY,
    Deployer,
    SshServer,
    copy_source,
    port_is_open,
    stack_settings,
    start_sshd,
    wait_for,
)

pytestmark = pytest.mark.e2e

ITEMS = 1200
SHARD = 50


def stop(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@dataclass
class ControlPlane:
    temporal: str
    s3: str


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """Temporal and S3 on "the laptop", started by the project's own program script."""
    data = tmp_path_factory.mktemp("laptop")
    temporal_port, s3_port = free_port(), free_port_block(10)
    env = {
        **os.environ,
        "PATH": f"{INSTANCE_VENV / 'bin'}:{os.environ.get('PATH', '')}",
        "DATA_DIR": str(data),
        "TEMPORAL_HOST": "127.0.0.1",
        "TEMPORAL_PORT": str(temporal_port),
        "TEMPORAL_UI_PORT": str(free_port()),
        "TEMPORAL_NAMESPACE": "default",
        "S3_HOST": "127.0.0.1",
        "S3_PORT": str(s3_port),
        "MINIO_ACCESS_KEY": "e2e-access",
        "MINIO_SECRET_KEY": MINIO_SECRET_KEY,
    }
    processes = []
    for program in ("temporal", "s3"):
        with open(data / f"{program}.log", "wb") as log:
            processes.append(
                subprocess.Popen(
                    ["bash", "scripts/run_program.sh", program],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
    try:
        for port in (temporal_port, s3_port):
            wait_for(lambda port=port: port_is_open(port), 60, f"the laptop's port {port}")
        yield ControlPlane(f"127.0.0.1:{temporal_port}", f"127.0.0.1:{s3_port}")
    finally:
        for process in processes:
            stop(process)


@dataclass
class Fleet:
    members: dict[str, Deployer]
    fleet_file: Path
    deploy_output: str
    deploy_seconds: float


def member_settings(
    sshd: SshServer, remote_dir: Path, slots: int, control: ControlPlane
) -> dict[str, str]:
    settings = stack_settings(sshd, remote_dir)
    settings.update(
        DEPLOY_MODE="hybrid",
        # The instance's own view of the control plane: ports the tunnel forwards back.
        TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        MINIO_ENDPOINT=f"127.0.0.1:{free_port()}",
        TUNNEL_TEMPORAL_TARGET=control.temporal,
        TUNNEL_S3_TARGET=control.s3,
        TUNNEL_API_PORT=str(free_port()),
        TUNNEL_WEB_PORT=str(free_port()),
        TUNNEL_S3_CONSOLE_PORT=str(free_port()),
        # Only local mode generates the tiny model on the instance: point at this one.
        LLAMA_MODEL=str((REPO_ROOT / "models" / "tiny-llama.gguf").resolve()),
        LLAMA_PARALLEL=str(slots),
        CPU_TASK_QUEUE=f"fleet-cpu-{os.getpid()}",
        GPU_TASK_QUEUE=f"fleet-gpu-{os.getpid()}",
        WORKER_IDLE_EXIT_SECONDS="120",
    )
    settings.pop("TEMPORAL_UI_PORT")
    return settings


@pytest.fixture(scope="module")
def fleet(
    sshd: SshServer, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet-deploy")
    second = start_sshd(base / "sshd-2")
    source = copy_source(base / "src")
    members: dict[str, Deployer] = {}
    lines = []
    for name, server, slots in (("box-a", sshd, 4), ("box-b", second, 2)):
        remote_dir = base / name / "workspace"
        remote_dir.parent.mkdir()
        deployer = Deployer(server, source, remote_dir)
        deployer.settings = member_settings(server, remote_dir, slots, control_plane)
        deployer.write_env(source / f"{name}.env")
        members[name] = deployer
        lines.append(f"{name}  {name}.env")
    fleet_file = source / "fleet.txt"
    fleet_file.write_text("# the e2e fleet\n" + "\n".join(lines) + "\n")
    first = members["box-a"]
    try:
        result = first.run("fleet", "deploy", str(fleet_file), timeout=600)
        assert result.returncode == 0, result.output
        yield Fleet(members, fleet_file, result.output, result.seconds)
    finally:
        for deployer in members.values():
            deployer.stop_instance()
        stop(second.process)


def api(deployer: Deployer, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{deployer.api_url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{path}: HTTP {error.code}: {error.read()[:2000]!r}") from None
    with response:
        if "results" in path:
            return [json.loads(line) for line in response.read().splitlines() if line.strip()]
        return json.load(response)


def healthy(deployer: Deployer) -> bool:
    try:
        return bool(api(deployer, "/health")["status"] == "ok")
    except (OSError, ValueError):
        return False


def test_one_command_deploys_both_members(fleet: Fleet) -> None:
    output = fleet.deploy_output
    assert "fleet deploy: 2/2 ok" in output, output
    for name, deployer in fleet.members.items():
        assert f"BOX_NAME={name}" in (deployer.remote_dir / ".env").read_text()
        programs = deployer.program_pids()
        assert programs["fastapi"] and programs["llama"], programs
        assert not programs.get("temporal") and not programs.get("minio"), "hybrid: no own"
    table = [line for line in output.splitlines() if line.startswith(("box-a", "box-b"))]
    assert len(table) == 2 and all(" ok " in line for line in table), output


def test_a_batch_runs_across_both_boxes_through_the_tunnels(fleet: Fleet) -> None:
    first = fleet.members["box-a"]
    tunnel = first.popen("fleet", "tunnel", str(fleet.fleet_file))
    try:
        for deployer in fleet.members.values():
            for setting in ("TEMPORAL_ADDRESS", "MINIO_ENDPOINT"):
                port = int(deployer.settings[setting].rsplit(":", 1)[1])
                wait_for(
                    lambda port=port: port_is_open(port) or tunnel.poll() is not None,
                    60,
                    f"the tunnel's {setting} on the instance",
                )
                assert tunnel.poll() is None, tunnel.communicate()
        for deployer in fleet.members.values():  # Temporal and S3 reached, bucket made
            wait_for(lambda d=deployer: healthy(d), 90, "the member's /health to be ok")
        items = [
            {
                "custom_id": f"e{i}",
                "messages": [{"role": "user", "content": f"q {i}"}],
                "max_tokens": 8,
            }
            for i in range(ITEMS)
        ]
        started = time.monotonic()
        batch = api(first, "/batch", {"items": items, "shard_size": SHARD})
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            batch = api(first, f"/batch/{batch['id']}")
            if batch["is_terminal"]:
                break
            time.sleep(1)
        seconds = time.monotonic() - started
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
        lines = api(first, f"/batch/{batch['id']}/results")
        ids = [line["custom_id"] for line in lines]
        assert len(ids) == len(set(ids)) == ITEMS and set(ids) == {f"e{i}" for i in range(ITEMS)}
        assert set(batch["boxes"]) == {"box-a", "box-b"}, batch["boxes"]
        boxes = {box["box"]: box for box in api(fleet.members["box-b"], "/queues")["boxes"]}
        assert boxes["box-a"]["slots"] == 4 and boxes["box-b"]["slots"] == 2, boxes
        print(f"\nfleet deploy {fleet.deploy_seconds:.0f}s; batch {seconds:.1f}s: {batch['boxes']}")
    finally:
        tunnel.terminate()
        tunnel.communicate(timeout=30)


def test_status_and_stop_cover_the_fleet(fleet: Fleet) -> None:
    first = fleet.members["box-a"]
    status = first.run("fleet", "status", str(fleet.fleet_file), timeout=120)
    table = [line for line in status.stdout.splitlines() if line.startswith(("box-a", "box-b"))]
    assert len(table) == 2, status.output
    stopped = first.run("fleet", "stop", str(fleet.fleet_file), timeout=180)
    assert stopped.returncode == 0, stopped.output
    for deployer in fleet.members.values():
        assert not (deployer.remote_dir / "data" / "supervisord.pid").exists() or not any(
            deployer.program_pids().values()
        )
