"""deploy.cli: the command parser and registry of ./deploy_vast.sh, and the settings it
loads (kernel.config through deploy.settings); no sshd."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

import deploy.commands  # noqa: F401, I001  (registers the commands)
from deploy import cli
from deploy.cli import COMMANDS, Context, command, main, parse_command_args, split_argv
from deploy.console import DeployError
from deploy.settings import DEPLOY_KEYS, data_dir_in_repo, image_hint, load
from kernel.config import PROJECT_ROOT, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DEPLOY_TRACE", raising=False)


def write_env(path: Path, **values: str) -> Path:
    base = {"VAST_HOST": "ssh4.vast.ai", "VAST_PORT": "34567", "VAST_SSH_KEY": "/keys/id"}
    base.update(values)
    path.write_text("".join(f"{k}={v}\n" for k, v in base.items() if v != "-"))
    return path


@pytest.mark.parametrize(
    ("argv", "command", "args", "dry_run", "env_file"),
    [
        ([], "deploy", [], False, None),
        (["--dry-run"], "deploy", [], True, None),
        (["--env-file", "a.env", "status"], "status", [], False, "a.env"),
        (["logs", "fastapi", "-f", "-n", "5"], "logs", ["fastapi", "-f", "-n", "5"], False, None),
        (["logs", "--dry-run", "-f"], "logs", ["-f"], True, None),  # global flags anywhere
        # everything after ssh is the remote command, flags included
        (["ssh", "ls", "-la", "--dry-run"], "ssh", ["ls", "-la", "--dry-run"], False, None),
        (["--dry-run", "fleet", "deploy", "f.txt"], "fleet", ["deploy", "f.txt"], True, None),
        (["--", "status"], "deploy", ["status"], False, None),
    ],
)
def test_split_argv(
    argv: list[str], command: str, args: list[str], dry_run: bool, env_file: str | None
) -> None:
    found = split_argv(argv)
    assert (found.command, found.args, found.dry_run, found.env_file) == (
        command,
        args,
        dry_run,
        env_file,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unknown flag '--bogus'; see ./deploy_vast.sh --help"),
        (["deploy", "--bogus"], "deploy: unknown flag '--bogus'; see ./deploy_vast.sh --help"),
        (["status", "extra"], "status takes no arguments (got: extra)"),
        (["frobnicate"], "unknown command 'frobnicate'; see ./deploy_vast.sh --help"),
        (["--env-file"], "--env-file needs a file"),
        (["logs", "-n", "many"], "logs: argument -n/--lines: needs a number of lines"),
    ],
)
def test_bad_command_lines_are_one_error_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    env = write_env(tmp_path / "a.env")
    assert main(["--env-file", str(env), *argv]) == 1
    assert capsys.readouterr().err == f"[deploy] error: {message}\n"


def test_help_lists_every_registered_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("deploy", "status", "logs", "tunnel", "stop", "ssh", "offers", "check", "fleet"):
        assert f"\n  {name}" in text
    assert "--dry-run" in text and "--env-file FILE" in text


def test_a_new_subcommand_is_one_function_and_one_registration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "COMMANDS", dict(COMMANDS))

    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--gpus", type=int, default=1)

    @command("up", "rent an instance", arguments=arguments, settings=False)
    def up(ctx: Context, args: argparse.Namespace) -> int:
        print(f"would rent {args.gpus} dry={ctx.dry_run}")
        return 7

    assert main(["--dry-run", "up", "--gpus", "2"]) == 7
    assert capsys.readouterr().out == "would rent 2 dry=True\n"
    assert main(["--help"]) == 0
    assert "  up                   rent an instance" in capsys.readouterr().out


def test_settings_come_from_kernel_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = write_env(
        tmp_path / "a.env",
        VAST_SSH_KEY="keys/id",
        API_KEY="'quoted $HOME key 1234'",
        DEPLOY_MODE="standalone",
    )
    # Deploy settings may come from the environment; the stack's come from the file only.
    monkeypatch.setenv("VAST_PORT", "2200")
    monkeypatch.setenv("INSTANCE_VENV", "/home/me/.venv")
    monkeypatch.setenv("DEPLOY_MODE", "local")
    monkeypatch.setenv("API_KEY", "short")
    settings = load(env, given=True)
    assert settings.port == 2200
    assert settings.instance_venv == "/opt/venv"
    assert settings.mode == "standalone"
    assert settings.stack.API_KEY is not None
    assert settings.stack.API_KEY.get_secret_value() == "quoted $HOME key 1234"
    assert settings.ssh_key == PROJECT_ROOT / "keys" / "id"
    assert settings.where == "root@ssh4.vast.ai:2200"
    assert settings.env_file_flag == f" --env-file {env}"
    assert set(DEPLOY_KEYS) <= set(Settings.model_fields)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"VAST_HOST": "-"}, "VAST_HOST is not set in {env}: the SSH host"),
        ({"VAST_SSH_KEY": "-"}, "VAST_SSH_KEY is not set in {env}"),
        ({"VAST_PORT": "22x"}, "VAST_PORT must be a port number (1-65535), got '22x'"),
        ({"API_PORT": "70000"}, "API_PORT must be a port number (1-65535), got '70000'"),
        ({"HEALTH_TIMEOUT": "soon"}, "HEALTH_TIMEOUT must be a number of seconds, got 'soon'"),
        ({"TUNNEL_S3_TARGET": "nine"}, "TUNNEL_S3_TARGET must be host:port, got 'nine'"),
        ({"DEPLOY_MODE": "cluster"}, "DEPLOY_MODE must be one of hybrid, standalone, local"),
        ({"VAST_HOST": "-oProxyCommand=x"}, "VAST_HOST must be a host name or IP address"),
        ({"VAST_USER": "ro ot"}, "VAST_USER must be a user name, got 'ro ot'"),
        ({"REMOTE_DIR": "workspace"}, "REMOTE_DIR must be an absolute directory path"),
        ({"REMOTE_DIR": "/workspace/"}, "REMOTE_DIR must be an absolute directory path"),
        ({"INSTANCE_VENV": "venv"}, "INSTANCE_VENV must be an absolute path"),
        ({"DATA_DIR": "."}, "DATA_DIR must be a folder of its own"),
        ({"LOG_LEVEL": "LOUD"}, "invalid setting LOG_LEVEL: Input should be"),
        ({"API_KEY": "short"}, "invalid setting API_KEY: must be at least 16 characters"),
    ],
)
def test_bad_settings_name_the_variable(
    tmp_path: Path, values: dict[str, str], message: str
) -> None:
    env = write_env(tmp_path / "a.env", **values)
    with pytest.raises(DeployError) as error:
        load(env, given=True)
    assert message.format(env=env) in str(error.value)
    assert "short" not in str(error.value).replace("shortly", "")


def test_missing_env_files(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="--env-file: no settings file at"):
        load(tmp_path / "none.env", given=True)
    with pytest.raises(DeployError, match="copy .env.example to .env"):
        load(tmp_path / ".env", given=False)


@pytest.mark.parametrize(
    ("data_dir", "synced"),
    [
        ("data", "data"),
        ("./state/", "state"),
        ("a/../b", "b"),
        ("../elsewhere", None),
        ("/workspace/run/data", "run/data"),
        ("/srv/data", None),
    ],
)
def test_data_dir_in_repo(data_dir: str, synced: str | None) -> None:
    assert data_dir_in_repo(data_dir, "/workspace") == synced


def test_image_hint_prefers_vast_image() -> None:
    assert image_hint("ghcr.io/me/x:canary") == "ghcr.io/me/x:canary"
    assert image_hint("").startswith("ghcr.io/")


def test_check_prints_what_the_instance_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The copied .env.example: hybrid on the instance, and no model there."""
    env = tmp_path / "example.env"
    env.write_text(
        (PROJECT_ROOT / ".env.example").read_text()
        + "VAST_HOST=ssh4.vast.ai\nVAST_PORT=34567\nVAST_SSH_KEY=/k\n"
    )
    assert main(["--env-file", str(env), "check"]) == 0
    out = capsys.readouterr().out
    assert "  mode       hybrid (starts fastapi; workers on demand)" in out
    assert "  model      (none: no llama-server; set LLAMA_MODEL)" in out


def test_launcher_runs_the_package_with_a_python_it_finds(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env["DEPLOY_PYTHON"] = str(tmp_path / "nope")
    missing = subprocess.run(
        ["bash", str(PROJECT_ROOT / "deploy_vast.sh"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr == f"[deploy] error: DEPLOY_PYTHON: no python at {tmp_path}/nope\n"
    env.pop("DEPLOY_PYTHON")
    found = subprocess.run(
        ["bash", str(PROJECT_ROOT / "deploy_vast.sh"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("Usage: ./deploy_vast.sh")


def test_parse_command_args_for_logs() -> None:
    args = parse_command_args(COMMANDS["logs"], ["web", "-n", "3", "--follow"])
    assert (args.program, args.lines, args.follow) == ("web", 3, True)
    with pytest.raises(DeployError, match="unexpected argument"):
        parse_command_args(COMMANDS["logs"], ["web", "fastapi"])


def test_settings_summary_says_what_make_up_and_the_deploy_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `cp .env.example .env`: `make up` runs local mode with the tiny model (the
    DEPLOY_MODE in the file is the instance's), and the summary says so."""
    from kernel.config import main as check_settings

    env = tmp_path / ".env"
    env.write_text((PROJECT_ROOT / ".env.example").read_text())
    assert check_settings(["--env-file", str(env)]) == 0
    out = capsys.readouterr().out
    assert "  mode       local (starts fastapi, llama, web, temporal, minio;" in out
    assert "model models/tiny-llama.gguf" in out
    assert "  deploy     hybrid on the instance (DEPLOY_MODE in the file), model (none)" in out


def test_renting_commands_run_the_autopilot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`up`, `down`, `boxes` and `drain` are deploy_vast.sh commands: each reaches the
    autopilot, which says in one line what is missing (here the Vast API key)."""
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", "up", "--count", "1", "--max-price", "0.1"]) == 1
    assert main(["down", "--all"]) == 1
    assert main(["--dry-run", "down", "--all"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[autopilot] error: no Vast.ai API key")
    assert err[1].startswith("[autopilot] error: no Vast.ai API key")
    assert err[2] == (
        "[deploy] error: down: --dry-run is for up (it prints the offers it would take)"
    )


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["down"], "./deploy_vast.sh down: name the boxes to destroy, or pass --all"),
        (
            ["up", "--max-price", "abc"],
            "./deploy_vast.sh up: argument --max-price: invalid float value: 'abc' "
            "(see ./deploy_vast.sh up --help)",
        ),
        (
            ["drain", "--batch", "batch_1"],
            "./deploy_vast.sh drain: the following arguments are required: --api "
            "(see ./deploy_vast.sh drain --help)",
        ),
    ],
)
def test_renting_usage_errors_are_one_line_naming_the_command(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before the key or the network: exit 2 and one line that says what to fix."""
    assert main(words) == 2
    assert capsys.readouterr().err.splitlines() == [f"[autopilot] error: {message}"]
