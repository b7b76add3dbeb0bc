"""The deploy's phases without sshd: remote commands built as data, what --dry-run prints,
the sync's filters, the env upload, the lock, converge's outcome, the tunnel's forwards and
the summary. Where a phase runs a script, the script runs here under bash (the "instance"
is a temporary folder), never over SSH."""

from __future__ import annotations

import argparse
import base64
import shlex
import subprocess
from pathlib import Path

import pytest

from deploy.cli import Context
from deploy.commands import logs_script, ssh_script, status, summary
from deploy.console import DeployError
from deploy.converge import Outcome, converge, converge_script, dry_run_plan_script, failure
from deploy.lock import RemoteLock, lock_script
from deploy.preflight import check_key, pins, preflight, runtime_script
from deploy.remote import Call, Remote, explain_ssh_failure, prelude
from deploy.settings import DeploySettings, load
from deploy.sync import (
    changed_files,
    env_upload_script,
    rsync_args,
    rsync_literal,
    secret_filters,
    upload_env,
)
from deploy.tunnel import forwards
from kernel.config import PROJECT_ROOT, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DEPLOY_TRACE", raising=False)


def settings_for(tmp_path: Path, **values: str) -> DeploySettings:
    base = {
        "VAST_HOST": "ssh4.vast.ai",
        "VAST_PORT": "34567",
        "VAST_SSH_KEY": str(tmp_path / "id_key"),
        "REMOTE_DIR": str(tmp_path / "instance"),
    }
    base.update(values)
    env = tmp_path / "a.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in base.items()))
    return load(env, given=True)


def bash(script: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], input=stdin, capture_output=True, text=True, check=False
    )


def test_ssh_commands_are_data(tmp_path: Path) -> None:
    remote = Remote(settings_for(tmp_path))
    call = remote.stdin_call("echo hi")
    assert call.argv[:5] == ("ssh", "-p", "34567", "-i", str(tmp_path / "id_key"))
    assert "StrictHostKeyChecking=accept-new" in call.argv
    assert call.argv[-3:] == ("root@ssh4.vast.ai", "bash", "-s")
    assert call.stdin is not None and call.stdin.endswith("echo hi\n")
    remote.ctl_dir, remote.mux_ready = tmp_path, True
    assert f"ControlPath={tmp_path / 'mux'}" in remote.stdin_call("true").argv
    rsync = remote.rsync_call(["-r", "src/", "dst"])
    assert rsync.argv[0] == "rsync" and rsync.argv[1] == "-e"
    assert rsync.argv[2].startswith("'ssh' '-p' '34567'")


def test_values_reach_the_instance_as_words_never_as_code(tmp_path: Path) -> None:
    weird = str(tmp_path / "dir with 'q' \"dq\" $(touch pwned) `x` ;y")
    script = prelude(weird, "/opt/venv") + 'printf "%s" "$REMOTE_DIR"\n'
    result = bash(script)
    assert result.stdout == weird
    command = Remote(settings_for(tmp_path, REMOTE_DIR=weird)).command_call("pwd").argv[-1]
    assert shlex.split(command)[:2] == ["bash", "-c"]
    assert not (Path.cwd() / "pwned").exists()


def test_dry_run_prints_what_would_change_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = Remote(settings_for(tmp_path), dry_run=True)
    assert remote.run("stop every service", "scripts/stop_services.sh") == 0
    assert remote.secret(".env upload", "content=SECRET") == (0, "")
    assert remote.attached("shell", "exec bash -l") == 0
    out = capsys.readouterr().out
    assert "[dry-run] would run on root@ssh4.vast.ai:34567: stop every service\n" in out
    assert "    scripts/stop_services.sh" in out
    assert ".env upload (contents not shown)" in out and "SECRET" not in out
    assert remote.rsync_call(["a"]).argv[:2] == ("rsync", "--dry-run")


def test_explains_ssh_failures(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    cases = {
        "ssh: connect to host x port 1: Connection refused": "nothing accepts SSH at ssh4",
        "ssh: Could not resolve hostname x": "cannot resolve VAST_HOST 'ssh4.vast.ai'",
        "Host key verification failed.": "differs from the one recorded in .deploy/known_hosts",
        "root@x: Permission denied (publickey).": f"refused the key {tmp_path / 'id_key'}",
        "kex_exchange_identification: Connection closed": "may still be starting",
        "weird": "cannot connect to root@ssh4.vast.ai:34567: weird",
    }
    for errors, fragment in cases.items():
        assert fragment in explain_ssh_failure(errors, settings)


def test_check_key(tmp_path: Path) -> None:
    key = tmp_path / "id_key"
    with pytest.raises(DeployError, match="no key at"):
        check_key(key)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o644)
    with pytest.raises(DeployError, match=r"accessible by other users \(mode 644\); run: chmod"):
        check_key(key)
    key.chmod(0o600)
    check_key(key)
    public = tmp_path / "id_key.pub"
    public.write_text("ssh-ed25519 AAAAC3Nza me@laptop\n")
    public.chmod(0o600)
    with pytest.raises(DeployError, match=r"is a public key; .*\(.*id_key if that is its pair\)"):
        check_key(public)


def test_runtime_check_reports_what_the_instance_lacks(tmp_path: Path) -> None:
    script = runtime_script(pins(PROJECT_ROOT / "requirements.instance.txt"))
    settings = settings_for(tmp_path, INSTANCE_VENV=str(tmp_path / "no-venv"))
    result = bash(prelude(settings.remote_dir, settings.instance_venv) + script)
    assert result.stdout.startswith(f"missing {tmp_path}/no-venv/bin/python")


def test_sync_filters_keep_secrets_and_data_here(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "keys").mkdir(parents=True)
    key = root / "keys" / "vast[1]"
    key.write_text("k")
    env = root / "prod.env"
    settings = settings_for(tmp_path, VAST_SSH_KEY=str(key), DATA_DIR="./state/")
    settings = DeploySettings(env, True, settings.stack)
    filters = secret_filters(settings, root)
    assert filters == [
        "--filter=- /keys/vast\\[1]",
        "--filter=- /prod.env",
        "--filter=- /state/",
    ]
    args = rsync_args(settings, root)
    assert args[-2:] == [f"{root}/", settings.rsync_target]
    assert "--filter=- /.env" in args and "--delete" in args
    assert rsync_literal("a*b") == "a\\*b"


def test_changed_files_from_rsync_itemized_lines() -> None:
    itemized = "\n".join(
        [
            ">f+++++++++ app/main.py",
            "cd+++++++++ app/new/",
            "*deleting   old.py",
            ".f..t...... same.py",
            "cL+++++++++ link",
            "",
        ]
    )
    assert changed_files(itemized) == ["app/main.py", "old.py", "link"]


@pytest.mark.parametrize("dry_run", [False, True])
def test_env_upload_sends_bytes_with_mode_600_or_only_compares(
    tmp_path: Path, dry_run: bool
) -> None:
    content = b"API_KEY='a \"b\" $HOME `x`'\n"
    instance = tmp_path / "instance"
    script = prelude(str(instance), "/opt/venv") + env_upload_script(content, dry_run)
    assert base64.b64encode(content).decode() in script and b"$HOME" not in script.encode()
    first = bash(script)
    assert first.stdout.strip() == "changed", first.stderr
    if dry_run:
        assert not instance.exists()
        return
    assert (instance / ".env").read_bytes() == content
    assert (instance / ".env").stat().st_mode & 0o777 == 0o600
    assert bash(script).stdout.strip() == "same"


def test_lock_script_waits_then_times_out(tmp_path: Path) -> None:
    import fcntl

    instance = tmp_path / "instance"
    (instance / ".deploy").mkdir(parents=True)
    script = prelude(str(instance), "/opt/venv") + lock_script(1, "laptop pid 1")
    with open(instance / ".deploy" / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        blocked = bash(script)
    assert blocked.returncode == 75
    assert blocked.stdout.splitlines() == ["waiting another deploy", "timeout"]
    free = bash(script)
    assert free.stdout.splitlines() == ["locked"]
    assert (instance / ".deploy" / "lock.owner").read_text() == "laptop pid 1\n"


def test_converge_outcome_and_failure_lines() -> None:
    outcome = Outcome()
    for line in ["plan: start the stack", "done: started the stack", "unhealthy: web FATAL"]:
        outcome.read(line)
    assert outcome.done == "started the stack"
    assert "are not healthy (web FATAL); fix and run ./deploy_vast.sh again" in failure(
        1, outcome, "root@h:1"
    )
    assert failure(255, Outcome(), "root@h:1").startswith("lost the SSH connection")
    outcome.read("error: port 8000 (API_PORT) is already taken")
    assert failure(4, outcome, "root@h:1") == "port 8000 (API_PORT) is already taken"
    assert "deploy.instance.converge --health-timeout" in converge_script(30)


def test_dry_run_plan_runs_on_an_empty_instance(tmp_path: Path) -> None:
    """The plan script with this checkout's plan.py and manifest.py fed on stdin."""
    script = prelude(str(tmp_path / "nothing"), str(PROJECT_ROOT / ".venv"))
    script += dry_run_plan_script(["app/main.py", "it's here"])
    if not (PROJECT_ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv")
    result = bash(script)
    assert result.stdout.strip() == "plan: start the stack (scripts/start_services.sh)"


def test_tunnel_forwards_and_reverse_forwards_in_hybrid_mode(tmp_path: Path) -> None:
    hybrid = forwards(settings_for(tmp_path, TEMPORAL_ADDRESS="127.0.0.1:17233"))
    assert "-L" in hybrid.args and "127.0.0.1:18000:127.0.0.1:8000" in hybrid.args
    assert "127.0.0.1:17233:127.0.0.1:7233" in hybrid.args
    assert hybrid.reverse[0] == "Temporal: instance 127.0.0.1:17233 -> this machine 127.0.0.1:7233"
    remote_s3 = forwards(settings_for(tmp_path, MINIO_ENDPOINT="s3.example.com:443"))
    assert len(remote_s3.reverse) == 1
    local = forwards(settings_for(tmp_path, DEPLOY_MODE="local"))
    assert "-R" not in local.args and not local.reverse


def test_summary_names_the_commands_with_the_env_file(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    ctx = Context(False, settings.env_file, True, _settings=settings)
    text = summary(ctx, "started the stack")
    assert text.startswith(f"Deployed root@ssh4.vast.ai:34567:{tmp_path}/instance (mode hybrid)")
    assert "  done:        started the stack" in text
    assert f"./deploy_vast.sh --env-file {settings.env_file} status" in text
    assert "-L 127.0.0.1:18000:127.0.0.1:8000" in text


def test_logs_and_ssh_scripts_quote_their_words() -> None:
    assert "program='a b'\nlines=5\nfollow=1\n" in logs_script("a b", 5, True)
    assert ssh_script(["echo", "$(x)", "a;b"]) == "cd -- \"$REMOTE_DIR\" && exec echo '$(x)' 'a;b'"
    assert 'exec "${SHELL:-bash}" -l' in ssh_script([])


def test_context_loads_settings_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    ctx = Context(False, settings.env_file, True)
    assert ctx.settings is ctx.settings
    ctx.close()


class LocalRemote(Remote):
    """The real Remote with `bash` on this machine in place of `ssh TARGET bash`: every
    phase's own logic runs, and its scripts run against a temporary "instance" folder."""

    def stdin_call(self, body: str) -> Call:
        return Call(("bash", "-s"), self.script(body))

    def command_call(self, body: str, tty: bool = False) -> Call:
        return Call(("bash", "-c", self.script(body)))

    def connect(self) -> None:
        self.mux_ready = False


def local_settings(tmp_path: Path, **values: str) -> DeploySettings:
    key = tmp_path / "id_key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    return settings_for(tmp_path, **{"INSTANCE_VENV": str(PROJECT_ROOT / ".venv"), **values})


def test_lock_phase_takes_waits_for_and_releases_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = RemoteLock(LocalRemote(local_settings(tmp_path)))
    first.acquire()
    assert "[deploy] lock: acquired" in capsys.readouterr().err
    second = RemoteLock(LocalRemote(local_settings(tmp_path, DEPLOY_LOCK_TIMEOUT="1")))
    with pytest.raises(DeployError, match="another deploy still holds the lock on .* after 1s"):
        second.acquire()
    assert "another deploy holds the instance" in capsys.readouterr().err
    second.release()
    first.release()
    assert capsys.readouterr().err == "[deploy] lock: released\n"
    third = RemoteLock(LocalRemote(local_settings(tmp_path)))
    third.acquire()
    third.release()


def test_env_phase_sends_then_finds_it_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = local_settings(tmp_path)
    assert upload_env(LocalRemote(settings, dry_run=True)).changed
    assert "it differs from the instance's copy" in capsys.readouterr().out
    assert not Path(settings.remote_dir).exists()
    assert upload_env(LocalRemote(settings)).changed
    assert not upload_env(LocalRemote(settings)).changed
    assert "env: " in capsys.readouterr().err
    assert (Path(settings.remote_dir) / ".env").read_bytes() == settings.env_file.read_bytes()


@pytest.mark.skipif(not (PROJECT_ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv")
def test_preflight_phase_checks_the_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preflight(LocalRemote(local_settings(tmp_path)))  # .venv has python, maybe supervisord
    err = capsys.readouterr().err
    assert err.endswith("rsync and flock on the instance)\n") or "the instance lacks" in err
    with pytest.raises(DeployError, match="the instance lacks .*no-venv/bin/python"):
        preflight(LocalRemote(local_settings(tmp_path, INSTANCE_VENV=str(tmp_path / "no-venv"))))


@pytest.mark.skipif(not (PROJECT_ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv")
def test_converge_phase_plans_a_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    remote = LocalRemote(local_settings(tmp_path), dry_run=True)
    assert converge(remote, ["app/main.py"]) == "would start the stack (scripts/start_services.sh)"
    captured = capsys.readouterr()
    assert "[deploy] start: would start the stack" in captured.err
    assert "would run on root@ssh4.vast.ai:34567: converge, then wait up to 300s" in captured.out


def test_converge_phase_reports_the_instances_reason(tmp_path: Path) -> None:
    class Failing(LocalRemote):
        def script(self, body: str) -> str:
            return "echo 'plan: start'; echo 'unhealthy: fastapi failed to start (FATAL)'; exit 1"

    with pytest.raises(DeployError, match=r"are not healthy \(fastapi failed to start \(FATAL\)\)"):
        converge(Failing(local_settings(tmp_path)), [])


def test_status_command_on_an_empty_instance(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    ctx = Context(False, settings.env_file, True, _settings=settings)
    ctx._remote = LocalRemote(settings)
    with pytest.raises(DeployError, match="nothing is deployed in .* run ./deploy_vast.sh first"):
        status(ctx, argparse.Namespace())
