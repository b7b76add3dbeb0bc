"""`python -m deploy.autopilot up` end to end against the local Vast.ai stand-in.

The real `vastai` SDK rents an offer from harness.fake_vast, whose instance is a private
sshd on this machine that sees the container's variables (CONTAINER_ID, CONTAINER_API_KEY,
VAST_URL: set in its sessions with sshd's SetEnv, as Vast sets them in the container). The
real deploy boots the stack there in local mode; a batch runs with every custom_id exactly
once; then, with no work left, the box's autostop destroys its own instance through the
stand-in after IDLE_RELEASE_MINUTES, and the meter stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.autopilot import read_env_file
from harness.batches import assert_exactly_once, chat_items
from harness.fake_vast import FakeVast, offer
from tests.e2e.conftest import (
    API_KEY,
    INSTANCE_VENV,
    SSHD,
    Deployer,
    SshServer,
    copy_source,
    port_is_open,
    stack_settings,
    start_sshd,
    wait_for,
)

pytestmark = pytest.mark.e2e

IDLE_MINUTES = 1.5
PRICE = 0.36


class Box:
    """A rented instance: a private sshd accepting the user's key, whose sessions see the
    container's variables."""

    def __init__(self, folder: Path, public_key: Path, env: dict[str, str]) -> None:
        self.server: SshServer = start_sshd(folder)
        shutil.copy(public_key, folder / "authorized_keys")
        names = ("CONTAINER_ID", "CONTAINER_API_KEY", "VAST_URL")
        config = folder / "sshd_config"
        config.write_text(
            config.read_text() + "SetEnv " + " ".join(f"{n}={env[n]}" for n in names) + "\n"
        )
        os.kill(self.server.process.pid, signal.SIGHUP)  # sshd -D re-executes itself
        time.sleep(0.5)
        wait_for(lambda: port_is_open(self.server.port), 15, "the box's sshd after SIGHUP")
        self.host = "127.0.0.1"
        self.port = self.server.port

    def stop(self) -> None:
        process = self.server.process
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


@dataclass
class Rented:
    fake: FakeVast
    deployer: Deployer
    state: Path
    up_output: str
    up_seconds: float


def api(deployer: Deployer, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{deployer.api_url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    if path.endswith("/results"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


@pytest.fixture(scope="module")
def rented(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rented]:
    if not SSHD.exists() or shutil.which("rsync") is None:
        pytest.skip("needs Debian's openssh-server and rsync")
    base = tmp_path_factory.mktemp("autopilot")
    key = base / "user_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)

    def start_box(instance_id: int, env: dict[str, str]) -> Box:
        return Box(base / f"box-{instance_id}", key.with_suffix(".pub"), env)

    fake = FakeVast([offer(21, price=PRICE), offer(22, price=0.9)], start_box).start()
    source = copy_source(base / "src")
    remote_dir = base / "instance" / "workspace"
    remote_dir.parent.mkdir()
    placeholder = SshServer(1, os.environ.get("USER") or "root", key, base, None)  # type: ignore[arg-type]
    settings = stack_settings(placeholder, remote_dir)
    settings["VAST_USER"] = subprocess.run(
        ["id", "-un"], capture_output=True, text=True, check=True
    ).stdout.strip()
    settings["IDLE_RELEASE_MINUTES"] = str(IDLE_MINUTES)
    # Local mode would stop (its own S3 holds the results); the test has read them.
    settings["IDLE_RELEASE_ACTION"] = "destroy"
    deployer = Deployer(placeholder, source, remote_dir, settings)
    env_file = deployer.write_env(source / "base.env")
    state = base / "state"
    started = time.monotonic()
    completed = subprocess.run(
        [
            str(INSTANCE_VENV / "bin" / "python"),
            "-m",
            "deploy.autopilot",
            "up",
            "--count",
            "1",
            "--max-price",
            "0.5",
            "--gpu-ram",
            "20",
            "--ssh-wait",
            "60",
            "--env-file",
            str(env_file),
        ],
        cwd=source,
        env=deployer.process_env(
            VAST_URL=fake.url, VAST_API_KEY=fake.api_key, AUTOPILOT_DIR=str(state)
        ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = completed.stdout + completed.stderr
    try:
        assert completed.returncode == 0, output + "\n".join(
            p.read_text() for p in state.glob("*.deploy.log")
        )
        yield Rented(fake, deployer, state, output, time.monotonic() - started)
    finally:
        deployer.stop_instance()
        fake.close()


def test_up_rents_the_cheapest_offer_and_deploys_it(rented: Rented) -> None:
    ledger = json.loads((rented.state / "fleet.json").read_text())["boxes"]
    ((name, box),) = ledger.items()
    assert (box["offer_id"], box["price_per_hour"], box["state"]) == (21, PRICE, "running")
    assert rented.fake.running() == [box["instance_id"]]
    box_env = read_env_file(Path(box["env_file"]))
    assert box_env["BOX_NAME"] == name and box_env["BOX_PRICE_PER_HOUR"] == f"{PRICE:g}"
    health = api(rented.deployer, "GET", "/health")
    assert health["status"] == "ok", health
    print(f"up: rented and deployed in {rented.up_seconds:.0f}s")


def test_batch_then_idle_autostop_destroys_the_instance(rented: Rented) -> None:
    ((box,),) = [list(json.loads((rented.state / "fleet.json").read_text())["boxes"].values())]
    items = chat_items(300, prefix="ap")
    batch = api(rented.deployer, "POST", "/batch", {"items": items})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        batch = api(rented.deployer, "GET", f"/batch/{batch['id']}")
        if batch["status"] in ("completed", "failed", "cancelled"):
            break
        assert rented.fake.running() == [box["instance_id"]], "released while the batch ran"
        time.sleep(0.5)
    done = time.time()
    assert batch["status"] == "completed", batch
    lines = api(rented.deployer, "GET", f"/batch/{batch['id']}/results")
    assert_exactly_once(lines, {item["custom_id"] for item in items})
    queues = api(rented.deployer, "GET", "/queues")
    assert [b["price_per_hour"] for b in queues["boxes"]] == [PRICE]

    instance = rented.fake.instances[box["instance_id"]]
    wait_for(lambda: instance.destroyed is not None, IDLE_MINUTES * 60 + 60, "autostop to destroy")
    assert instance.destroyed is not None
    idle = instance.destroyed - done
    assert idle >= IDLE_MINUTES * 60 - 12, idle  # minus at most one check (9 s) and rounding
    assert rented.fake.running() == []
    billed = rented.fake.spend(instance.id)
    # Spend is price x time within a second: the meter, and the autopilot's record of the start.
    assert abs(billed - PRICE * (instance.destroyed - instance.created) / 3600) <= PRICE / 3600
    assert abs(box["started"] - instance.created) <= 1.0
    log_file = rented.deployer.remote_dir / "data" / "logs" / "autostop.log"
    # Written when the box has the API's answer, a moment after the meter stopped.
    wait_for(
        lambda: f"destroyed instance {instance.id}" in log_file.read_text(), 30, "the log line"
    )
    log = log_file.read_text()
    assert "no batch running, no GPU-queue backlog and no request on box" in log
    assert f"destroyed instance {instance.id}" in log
    print(f"autostop: destroyed {idle:.0f}s after the batch ended; billed ${billed:.5f}")
