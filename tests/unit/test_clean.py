"""`make clean` deletes DATA_DIR, wherever it is, and refuses a folder that is not the stack's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "clean.sh"


def clean(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    env.update(ENV_FILE=os.devnull, DATA_DIR=str(data_dir))
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False
    )


def test_deletes_the_configured_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / "logs" / "fastapi.log").write_text("x\n")
    result = clean(data_dir)
    assert result.returncode == 0, result.stderr
    assert not data_dir.exists()
    assert f"deleted {data_dir}" in result.stderr


def test_refuses_a_folder_that_is_not_the_stacks(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me\n")
    result = clean(tmp_path)
    assert result.returncode != 0
    assert "does not look like the stack's DATA_DIR" in result.stderr
    assert (tmp_path / "precious.txt").exists()
