"""The autopilot against the local Vast.ai stand-in (harness.fake_vast): the real `vastai`
SDK over HTTP, and each rented instance a real private sshd on 127.0.0.1.

Every error of `up` (no API key, no offer fits, no credit, creation refused, SSH never came
up), the dry run, renting and releasing, `down`'s refusal for a standalone box, and a lost
interruptible box replaced by `watch`. The deploy step here is a real SSH command on the
box (the full deploy of a rented box is the end-to-end test's).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import autopilot
from deploy.vast import NoCredit, VastApi
from harness.fake_vast import FakeVast, NoBox, offer
from tests.e2e.conftest import SSHD, SshServer, start_sshd

pytestmark = pytest.mark.integration

KEY = "fake-vast-key"


class SshdBox:
    """One rented instance: a private sshd accepting the user's key."""

    def __init__(self, folder: Path, public_key: Path) -> None:
        self.server: SshServer = start_sshd(folder)
        shutil.copy(public_key, folder / "authorized_keys")
        self.host = "127.0.0.1"
        self.port = self.server.port

    def stop(self) -> None:
        process = self.server.process
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def user_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SSHD.exists() or shutil.which("ssh") is None:
        pytest.skip("needs Debian's openssh-server: apt-get install -y openssh-server")
    folder = tmp_path_factory.mktemp("user-key")
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture
def fake(tmp_path: Path, user_key: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    market = [
        offer(11, price=0.45),
        offer(12, price=0.30),
        offer(13, price=0.35, gpu="RTX 3090"),
        offer(14, price=0.25, reliability2=0.80),
        offer(15, price=0.60, gpu="A100 SXM4", gpu_ram=81920),
    ]

    def start_box(instance_id: int, env: dict[str, str]) -> SshdBox:
        return SshdBox(tmp_path / f"box-{instance_id}", user_key.with_suffix(".pub"))

    server = FakeVast(market, start_box, api_key=KEY).start()
    monkeypatch.setenv("VAST_API_KEY", KEY)
    monkeypatch.setenv("VAST_URL", server.url)
    monkeypatch.setenv("AUTOPILOT_DIR", str(tmp_path / "state"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def env_file(tmp_path: Path, user_key: Path) -> Path:
    path = tmp_path / "base.env"
    path.write_text(f"VAST_SSH_KEY={user_key}\nDEPLOY_MODE=hybrid\nLLAMA_PARALLEL=4\n")
    return path


def ssh_deploy(user_key: Path) -> autopilot.DeployHook:
    """The deploy step: a real command on the box over SSH, as the box's env file says."""

    def deploy(box: autopilot.Box, env_file: Path) -> tuple[int, str]:
        settings = autopilot.read_env_file(env_file)
        assert settings["VAST_PORT"] == str(box.port)
        assert settings["BOX_NAME"] == box.name
        completed = subprocess.run(
            [
                "ssh",
                "-i",
                str(user_key),
                "-p",
                settings["VAST_PORT"],
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                f"{settings.get('VAST_USER', 'root')}@{settings['VAST_HOST']}",
                "echo deployed",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return completed.returncode, completed.stdout + completed.stderr

    return deploy


def up_args(env_file: Path, *extra: str) -> list[str]:
    return ["up", "--env-file", str(env_file), "--gpu-ram", "20", *extra]


def test_no_api_key(
    tmp_path: Path, env_file: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert autopilot.main(up_args(env_file, "--count", "1", "--dry-run")) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("[autopilot] error: no Vast.ai API key: set VAST_API_KEY")


def test_key_from_the_sdk_config_file(
    fake: FakeVast, tmp_path: Path, env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAST_API_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "config" / "vastai").mkdir(parents=True)
    (tmp_path / "config" / "vastai" / "vast_api_key").write_text(KEY + "\n")
    assert autopilot.main(up_args(env_file, "--count", "1", "--dry-run")) == 0


def test_no_offer_fits_names_the_filter(fake: FakeVast, env_file: Path, capsys) -> None:
    assert autopilot.main(up_args(env_file, "--max-price", "0.1", "--dry-run")) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("error: no offer fits: none left after max price <= $0.1/h (4 before it)")
    )
    assert autopilot.main(up_args(env_file, "--gpu", "H100_SXM", "--dry-run")) == 1
    assert "none left after GPU name in H100 SXM (5 before it)" in capsys.readouterr().err
    assert autopilot.main(up_args(env_file, "--gpu-ram", "100", "--dry-run")) == 1
    assert "none left after GPU RAM >= 100 GB" in capsys.readouterr().err
    assert not fake.instances


def test_dry_run_prints_the_offers_and_rents_nothing(
    fake: FakeVast, env_file: Path, capsys
) -> None:
    args = up_args(env_file, "--count", "2", "--max-price", "0.5", "--dry-run")
    assert autopilot.main(args) == 0
    out = capsys.readouterr().out
    # The two cheapest that fit: 12 ($0.30) and 13 ($0.35); 14 is cheaper but unreliable.
    rows = [line.split()[0] for line in out.splitlines()[1:3]]
    assert rows == ["12", "13"]
    assert "2 box(es) on-demand: $0.650/h in total" in out
    assert not fake.instances
    assert not [r for r in fake.requests if r[0] == "PUT"]


def test_no_credit(fake: FakeVast, env_file: Path, capsys) -> None:
    fake.credit = 0.0
    assert autopilot.main(up_args(env_file, "--count", "1")) == 1
    assert "the Vast.ai account lacks credit" in capsys.readouterr().err
    assert not fake.instances
    # The refusal of the create call itself reads the same.
    with pytest.raises(NoCredit, match="lacks credit"):
        VastApi(url=fake.url).create(12, image="i", disk_gb=40, env={}, label="x", bid=None)


def test_creation_refused(fake: FakeVast, env_file: Path, capsys) -> None:
    fake.refuse_offers.add(12)
    assert autopilot.main(up_args(env_file, "--count", "1", "--max-price", "0.32")) == 1
    assert "renting offer 12 was refused (HTTP 400: Instance type by id 12 is not available.)" in (
        capsys.readouterr().err
    )
    assert not fake.instances


def test_ssh_never_came_up_destroys_the_instance(
    fake: FakeVast, env_file: Path, user_key: Path, capsys
) -> None:
    fake.start_box = lambda instance_id, env: NoBox()
    plan = autopilot.build_plan(
        autopilot.parser().parse_args(up_args(env_file, "--count", "1", "--ssh-wait", "3"))
    )
    with pytest.raises(autopilot.AutopilotError):
        autopilot.rent_one(
            VastApi(), autopilot.Ledger.load(), plan, fake.offers[12], ssh_deploy(user_key)
        )
    assert autopilot.main(up_args(env_file, "--count", "1", "--ssh-wait", "3")) == 1
    err = capsys.readouterr().err
    assert "SSH never came up within 3s (last state running); instance" in err
    assert "destroyed, nothing left billing" in err
    assert fake.running() == []
    assert all(i.destroyed is not None for i in fake.instances.values())


def test_up_status_down(fake: FakeVast, env_file: Path, user_key: Path, capsys) -> None:
    api = VastApi()
    plan = autopilot.build_plan(
        autopilot.parser().parse_args(up_args(env_file, "--count", "2", "--max-price", "0.5"))
    )
    assert autopilot.up(api, plan, dry_run=False, deploy=ssh_deploy(user_key)) == 0
    ledger = autopilot.Ledger.load()
    boxes = sorted(ledger.live(), key=lambda b: b.offer_id)
    assert [(b.offer_id, b.price_per_hour, b.state) for b in boxes] == [
        (12, 0.30, "running"),
        (13, 0.35, "running"),
    ]
    assert sorted(fake.running()) == sorted(b.instance_id for b in boxes)
    fleet = (ledger.folder / "fleet").read_text().splitlines()[1:]
    assert sorted(fleet) == sorted(f"{b.name} {b.name}.env" for b in boxes)
    box_env = autopilot.read_env_file(Path(boxes[0].env_file))
    assert box_env["BOX_PRICE_PER_HOUR"] == "0.3"
    assert box_env["IDLE_RELEASE_MINUTES"] == "10"
    # Not a setting (the autostop program reads it from the environment): the file's line.
    written = Path(boxes[0].env_file).read_text().splitlines()
    assert f"VAST_INSTANCE_ID={boxes[0].instance_id}" in written
    assert (Path(boxes[0].env_file).stat().st_mode & 0o777) == 0o600

    capsys.readouterr()
    assert autopilot.status(api) == 0
    out = capsys.readouterr().out
    assert "on-demand" in out and "running/running" in out and "$0.300" in out

    time.sleep(1.0)
    assert autopilot.main(["down", "--all"]) == 0
    assert fake.running() == []
    for box in autopilot.Ledger.load().boxes.values():
        assert box.state == "released"
        assert abs(box.spend() - fake.spend(box.instance_id)) <= box.price_per_hour / 3600
    assert autopilot.main(["down", "--all"]) == 0  # nothing live: nothing to do


def test_down_of_a_box_destroyed_elsewhere(fake: FakeVast, env_file: Path, user_key: Path) -> None:
    env_file.write_text(env_file.read_text() + "DEPLOY_MODE=standalone\n")
    plan = autopilot.build_plan(autopilot.parser().parse_args(up_args(env_file, "--count", "1")))
    assert autopilot.up(VastApi(), plan, dry_run=False, deploy=ssh_deploy(user_key)) == 0
    (box,) = autopilot.Ledger.load().live()
    fake.destroy(box.instance_id)  # its autostop, or the website

    def unreachable(_: autopilot.Box) -> None:
        raise AssertionError("a destroyed box is not asked for its batches")

    assert autopilot.down(VastApi(), [box.name], False, False, batches=unreachable) == 0
    assert autopilot.Ledger.load().boxes[box.name].state == "gone"


def test_down_refuses_a_standalone_box_holding_results(
    fake: FakeVast, env_file: Path, user_key: Path, capsys
) -> None:
    env_file.write_text(env_file.read_text() + "DEPLOY_MODE=standalone\n")
    plan = autopilot.build_plan(autopilot.parser().parse_args(up_args(env_file, "--count", "1")))
    assert autopilot.up(VastApi(), plan, dry_run=False, deploy=ssh_deploy(user_key)) == 0
    (box,) = autopilot.Ledger.load().live()
    capsys.readouterr()

    def holds(_: autopilot.Box) -> list[str]:
        return ["batch_aaa", "batch_bbb"]

    assert autopilot.down(VastApi(), [box.name], False, False, batches=holds) == 1
    err = capsys.readouterr().err
    assert (
        f"{box.name} runs standalone and holds the only copy of batches batch_aaa, batch_bbb"
        in (err)
    )
    assert "pass --force" in err
    assert fake.running() == [box.instance_id]
    assert autopilot.down(VastApi(), [box.name], False, False, batches=lambda _: None) == 1
    assert "(the box did not answer)" in capsys.readouterr().err
    assert autopilot.down(VastApi(), [box.name], False, True, batches=holds) == 0
    assert fake.running() == []


def test_watch_replaces_an_outbid_box_and_releases_all_when_done(
    fake: FakeVast, env_file: Path, user_key: Path, capsys
) -> None:
    args = up_args(env_file, "--count", "2", "--interruptible", "--bid", "0.2")
    plan = autopilot.build_plan(autopilot.parser().parse_args(args))
    api = VastApi()
    deploy = ssh_deploy(user_key)
    assert autopilot.up(api, plan, dry_run=False, deploy=deploy) == 0
    first = sorted(b.instance_id for b in autopilot.Ledger.load().live())
    assert all(fake.instances[i].is_bid and fake.instances[i].price == 0.2 for i in first)

    steps = iter(
        [
            # a long way to go: the outbid box is replaced
            autopilot.Progress(5000, False, 40, {}, {}),
            # nearly done: nothing waits, one box still busy
            autopilot.Progress(10, False, 0, {}, {}),
            autopilot.Progress(0, True, 0, {}, {}),
        ]
    )
    fake.outbid(first[0])
    total = autopilot.watch(api, plan, lambda: next(steps), interval=0.1, deploy=deploy)
    ledger = autopilot.Ledger.load()
    states = {b.instance_id: b.state for b in ledger.boxes.values()}
    assert states[first[0]] == "lost"
    assert states[first[1]] == "released"
    replacements = [i for i in states if i not in first]
    assert len(replacements) == 1 and states[replacements[0]] == "released"
    assert fake.running() == []
    assert abs(total - sum(fake.spend(i) for i in states)) < 0.2 * 3 / 3600
    assert f"batch done; total spend ${total:.4f}" in capsys.readouterr().out


def test_watch_keeps_the_boxes_while_the_batch_is_still_validating(
    fake: FakeVast, env_file: Path, user_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A batch just submitted shows 0 of 0 requests until its input is split: that is all
    its work ahead, not none left (watch once released every box there, and the batch sat
    at 0 done with no box to run it)."""
    plan = autopilot.build_plan(autopilot.parser().parse_args(up_args(env_file, "--count", "2")))
    api = VastApi()
    deploy = ssh_deploy(user_key)
    assert autopilot.up(api, plan, dry_run=False, deploy=deploy) == 0
    rented = sorted(b.instance_id for b in autopilot.Ledger.load().live())
    validating = autopilot.Progress(0, False, 0, {}, {}, counted=False)
    assert not validating.finished
    assert autopilot.idle_boxes(validating, ["a", "b"]) == []
    assert autopilot.should_replace(validating, ["a"], per_box_rate=100.0)
    running_then: list[list[int]] = []

    def progress() -> autopilot.Progress:
        running_then.append(sorted(fake.running()))
        if len(running_then) <= 3:
            return validating
        return autopilot.Progress(0, True, 0, {}, {})

    total = autopilot.watch(api, plan, progress, interval=0.1, deploy=deploy)
    # Every look while the batch validated found both boxes still rented.
    assert running_then[:4] == [rented] * 4
    assert fake.running() == []
    assert f"batch done; total spend ${total:.4f}" in capsys.readouterr().out


def test_watch_rides_out_unreadable_apis_and_rents_when_no_box_is_left(
    fake: FakeVast,
    env_file: Path,
    user_key: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A drain runs for hours: a closed tunnel (the batch API unreadable) or a Vast outage
    (503s) is warned about and waited out, never the end of the drain; a lost box whose
    replacement cannot be rented is rented again later, or the batch would wait forever."""
    monkeypatch.setattr(autopilot, "RENT_RETRY_SECONDS", 0.0)
    plan = autopilot.build_plan(autopilot.parser().parse_args(up_args(env_file, "--count", "1")))
    api = VastApi()
    deploy = ssh_deploy(user_key)
    assert autopilot.up(api, plan, dry_run=False, deploy=deploy) == 0
    (first,) = [b.instance_id for b in autopilot.Ledger.load().live()]
    looks = 0

    def progress() -> autopilot.Progress:
        nonlocal looks
        looks += 1
        if looks <= 2:
            raise autopilot.BatchUnreadable("http://127.0.0.1:18000: connection refused")
        if looks == 3:
            fake.fail_next = 8  # this round's show of the box and the next round's, 4 tries each
        if looks == 5:
            fake.lose_host(first)
            fake.refuse_offers = set(fake.offers)  # the first replacement is refused
        if looks == 6:
            fake.refuse_offers = set()
        if looks < 9:
            return autopilot.Progress(5000, False, 40, {}, {})
        return autopilot.Progress(0, True, 0, {}, {})

    total = autopilot.watch(api, plan, progress, interval=0.1, deploy=deploy)
    err = capsys.readouterr().err
    assert "warning: cannot read the batch API: http://127.0.0.1:18000" in err
    assert "warning: cannot read the batch API: works again after" in err
    assert "warning: cannot read the Vast API" in err
    assert "error: replacing vast-" in err
    assert "no box left and 5000 request(s) to go: renting one" in err
    states = {b.instance_id: b.state for b in autopilot.Ledger.load().boxes.values()}
    assert states[first] == "lost"
    assert sorted(states.values()) == ["lost", "released"]
    assert fake.running() == []
    assert total > 0
