"""The control plane away: a box deployed in hybrid mode reaches the laptop's Temporal and
S3 only through `./deploy_vast.sh tunnel` (reverse SSH forwards), and the laptop falls
asleep mid-batch for OUTAGE_SECONDS.

"Asleep" is the tunnel's ssh client frozen (SIGSTOP): the box's sshd still listens on the
forwarded ports and accepts connections, but nothing comes back through them, old or new,
as when the laptop sleeps with its SSH session open. Temporal and S3 stay up on the laptop
(their timers run on: shard heartbeats time out there and the shards wait in the queue).
While it lasts, the box's processes (supervisord and everything under it: API, workers,
llama-server) must not spin or fill their logs; once the laptop wakes (SIGCONT) the batch
must go on by itself and complete with every custom_id exactly once and no error line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import test_fleet_deploy as fleet_e2e
from tests.e2e.conftest import Deployer, SshServer, copy_source, port_is_open, wait_for
from tests.e2e.test_fleet_deploy import ControlPlane, api, healthy, member_settings

pytestmark = pytest.mark.e2e

# How long the laptop sleeps: five minutes, as the issue asks (shorter only to try the test).
OUTAGE_SECONDS = float(os.environ.get("E2E_CONTROL_PLANE_AWAY_SECONDS", "300"))
ITEMS = 800
SHARD = 25
SLOTS = 4
# Bounds while the control plane is away, for the box's processes together (supervisord
# and all its descendants): average CPU in cores, and log bytes written. Measured: see
# docs/network-faults.md ("Control plane away").
MAX_CPU_CORES = 0.03
# 45 KB on a quiet machine, 102 KB at load 8: llama-server logs every request that was in
# flight at the freeze (more of them on a busy machine), so the bound leaves room for that;
# a loop that warns on every try writes megabytes over the outage.
MAX_LOG_BYTES = 200_000
# Longer than the outage, so the workers wait through it rather than leave (their idle
# exit is a separate matter: the API's reconciler starts them again when work waits).
WORKER_IDLE_EXIT_SECONDS = int(OUTAGE_SECONDS) + 300

control_plane = fleet_e2e.control_plane  # the laptop's Temporal and S3 (a module fixture)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds used) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # After the name: state ppid ... utime (14th field of the line) stime (15th).
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds) for `root` and all its descendants."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    tree: dict[int, tuple[str, float]] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in tree:
            tree[pid] = (stats[pid][0], stats[pid][2])
            frontier += [child for child, (_, ppid, _) in stats.items() if ppid == pid]
    return tree


def child_pids(pid: int, name: str) -> list[int]:
    """Descendants of `pid` called `name`."""
    return [p for p, (n, _) in process_tree(pid).items() if n == name and p != pid]


@dataclass
class Usage:
    """CPU seconds per process of a tree, sampled through a stretch of time."""

    root: int
    first: dict[int, tuple[str, float]]
    last: dict[int, tuple[str, float]]

    @classmethod
    def start(cls, root: int) -> Usage:
        tree = process_tree(root)
        return cls(root, tree, dict(tree))

    def sample(self) -> None:
        for pid, (name, cpu) in process_tree(self.root).items():
            self.first.setdefault(pid, (name, 0.0))  # born during the stretch
            self.last[pid] = (name, cpu)

    def by_process(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for pid, (name, cpu) in self.last.items():
            key = f"{name}[{pid}]"
            used[key] = round(cpu - self.first[pid][1], 2)
        return used

    def total(self) -> float:
        return sum(self.by_process().values())


def log_bytes(remote_dir: Path) -> dict[str, int]:
    folder = remote_dir / "data" / "logs"
    return {path.name: path.stat().st_size for path in sorted(folder.glob("*.log*"))}


@dataclass
class Box:
    deployer: Deployer
    tunnel: subprocess.Popen[str]


@pytest.fixture(scope="module")
def box(
    sshd: SshServer, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Box]:
    """One box deployed in hybrid mode, its tunnel to the laptop up and /health ok."""
    base = tmp_path_factory.mktemp("away")
    source = copy_source(base / "src")
    remote_dir = base / "instance" / "workspace"
    remote_dir.parent.mkdir()
    deployer = Deployer(sshd, source, remote_dir)
    deployer.settings = member_settings(sshd, remote_dir, SLOTS, control_plane)
    deployer.settings.update(
        BOX_NAME="box-away",
        CPU_TASK_QUEUE=f"away-cpu-{os.getpid()}",
        GPU_TASK_QUEUE=f"away-gpu-{os.getpid()}",
        WORKER_IDLE_EXIT_SECONDS=str(WORKER_IDLE_EXIT_SECONDS),
    )
    deployer.write_env()
    tunnel = None
    try:
        result = deployer.run(timeout=600)
        assert result.returncode == 0, result.output
        tunnel = deployer.popen("tunnel")
        for setting in ("TEMPORAL_ADDRESS", "MINIO_ENDPOINT"):
            port = int(deployer.settings[setting].rsplit(":", 1)[1])
            wait_for(
                lambda port=port: port_is_open(port) or tunnel.poll() is not None,
                60,
                f"the tunnel's {setting} on the instance",
            )
            assert tunnel.poll() is None, tunnel.communicate()
        wait_for(lambda: healthy(deployer), 120, "the box's /health to be ok")
        yield Box(deployer, tunnel)
    finally:
        if tunnel is not None:
            for pid in child_pids(tunnel.pid, "ssh"):
                os.kill(pid, signal.SIGCONT)
            tunnel.terminate()
            tunnel.communicate(timeout=30)
        deployer.stop_instance()


def completed(deployer: Deployer, batch_id: str) -> tuple[int, dict]:
    batch = api(deployer, f"/batch/{batch_id}")
    return batch["request_counts"]["completed"], batch


@pytest.mark.timeout(int(OUTAGE_SECONDS) + 1500)
def test_the_box_waits_quietly_while_the_laptop_sleeps_and_the_batch_completes(box: Box) -> None:
    deployer = box.deployer
    ssh = child_pids(box.tunnel.pid, "ssh")
    assert len(ssh) == 1, f"expected the tunnel's one ssh client, found {ssh}"
    supervisord = int((deployer.remote_dir / "data" / "supervisord.pid").read_text())
    items = [
        {"custom_id": f"a{i}", "messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 8}
        for i in range(ITEMS)
    ]
    started = time.monotonic()
    batch_id = api(deployer, "/batch", {"items": items, "shard_size": SHARD})["id"]
    wait_for(lambda: completed(deployer, batch_id)[0] > 0, 300, "the batch's first lines")
    done_before, _ = completed(deployer, batch_id)
    assert done_before < ITEMS, "the batch ended before the outage: make it longer"

    # The laptop falls asleep.
    os.kill(ssh[0], signal.SIGSTOP)
    asleep = time.monotonic()
    usage = Usage.start(supervisord)
    logs_before = log_bytes(deployer.remote_dir)
    try:
        while time.monotonic() - asleep < OUTAGE_SECONDS:
            time.sleep(5)
            usage.sample()
        usage.sample()
        logs_after = log_bytes(deployer.remote_dir)
    finally:
        os.kill(ssh[0], signal.SIGCONT)
    woke = time.monotonic()
    outage = woke - asleep

    wait_for(lambda: healthy(deployer), 300, "the box's /health to be ok again")
    wait_for(
        lambda: completed(deployer, batch_id)[0] > done_before, 600, "the batch to progress again"
    )
    progressing = time.monotonic() - woke
    deadline = time.monotonic() + 900
    timeline = []
    while True:
        count, batch = completed(deployer, batch_id)
        timeline.append((round(time.monotonic() - woke), count))
        if batch["is_terminal"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    total = time.monotonic() - started

    cpu = usage.total()
    grown = {
        name: size - logs_before.get(name, 0)
        for name, size in logs_after.items()
        if size != logs_before.get(name, 0)
    }
    print(
        f"\ncontrol plane away {outage:.0f}s: box CPU {cpu:.2f}s "
        f"({100 * cpu / outage:.2f}% of a core), logs +{sum(grown.values())} bytes {grown}; "
        f"per process {usage.by_process()}\n"
        f"lines done before the outage: {done_before}/{ITEMS}; batch progressing "
        f"{progressing:.1f}s after the tunnels came back; batch total {total:.1f}s"
    )
    print("after the wake (s, lines done):", timeline[:: max(1, len(timeline) // 20)])
    if keep := os.environ.get("E2E_KEEP_LOGS"):
        shutil.copytree(deployer.remote_dir / "data" / "logs", keep, dirs_exist_ok=True)
    for name in grown:  # what the outage wrote, for the record
        with open(deployer.remote_dir / "data" / "logs" / name, "rb") as log:
            log.seek(logs_before.get(name, 0))
            written = log.read(logs_after[name] - logs_before.get(name, 0))
        print(f"--- {name}, during the outage ---\n{written[-4000:].decode(errors='replace')}")

    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}, batch
    lines = api(deployer, f"/batch/{batch_id}/results")
    ids = [line["custom_id"] for line in lines]
    assert len(ids) == len(set(ids)) == ITEMS and set(ids) == {f"a{i}" for i in range(ITEMS)}
    assert cpu / outage < MAX_CPU_CORES, usage.by_process()
    assert sum(grown.values()) < MAX_LOG_BYTES, grown
