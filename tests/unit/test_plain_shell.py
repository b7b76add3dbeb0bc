"""The operations scripts from a plain shell: no INSTANCE_VENV given, no /opt/venv here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kernel.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def plain_shell(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env.pop("ENV_FILE", None)
    (tmp_path / "empty.env").touch()
    env.update(ENV_FILE=str(tmp_path / "empty.env"), DATA_DIR=str(tmp_path / "data"), **extra)
    return env


@pytest.mark.skipif(Path("/opt/venv/bin/python").exists(), reason="the image's venv is here")
def test_supervisorctl_falls_back_to_the_project_virtualenv(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "scripts/supervisorctl.sh", "status"],
        cwd=REPO_ROOT,
        env=plain_shell(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "INSTANCE_VENV" not in result.stderr
    # The project's supervisorctl ran: no supervisord answers on this data dir's socket,
    # which the script says in one line with LSB's "not running" status.
    assert (
        f"not running: no supervisord answers on {tmp_path}/data/supervisor.sock" in result.stdout
    )
    assert result.returncode == 3


@pytest.mark.skipif(Path("/opt/venv/bin/python").exists(), reason="the image's venv is here")
def test_the_images_venv_named_in_a_copied_env_example_falls_back_too(tmp_path: Path) -> None:
    """`cp .env.example .env` (the deploy's settings) names the image's /opt/venv: a laptop
    has none, and the scripts still run from a plain shell."""
    env = plain_shell(tmp_path)
    Path(env["ENV_FILE"]).write_text("INSTANCE_VENV=/opt/venv\nDEPLOY_MODE=hybrid\n")
    result = subprocess.run(
        ["bash", "scripts/supervisorctl.sh", "status"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "INSTANCE_VENV" not in result.stderr
    assert (
        f"not running: no supervisord answers on {tmp_path}/data/supervisor.sock" in result.stdout
    )
    assert result.returncode == 3


def test_an_explicit_instance_venv_that_is_missing_still_stops(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "scripts/supervisorctl.sh", "status"],
        cwd=REPO_ROOT,
        env=plain_shell(tmp_path, INSTANCE_VENV=str(tmp_path / "nope")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"INSTANCE_VENV: no python at {tmp_path}/nope/bin/python" in result.stderr
