"""A second stack started with another DATA_DIR on the ports a running stack holds.

The launcher finds no supervisord under the new DATA_DIR, so it would start a second one whose
programs cannot bind their ports and go FATAL one by one. It must stop before starting anything,
with one line naming the port, the process holding it, the first stack's DATA_DIR and the
command that stops that stack, and leave the first stack running.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.stack import REPO_ROOT, Stack, start_stack
from kernel.config import Settings


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(Path(tmp_path_factory.mktemp("first")))
    try:
        yield running
    finally:
        running.stop()


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error" in line]


@pytest.mark.parametrize("args", [(), ("--dry-run",)], ids=["start", "dry-run"])
def test_another_data_dir_on_taken_ports_fails_fast_naming_the_stack(
    first: Stack, tmp_path: Path, args: tuple[str, ...]
) -> None:
    other = tmp_path / "other-data"
    fastapi = first.program_pid("fastapi")
    supervisord = int((first.data_dir / "supervisord.pid").read_text())

    result = first.script("start_services.sh", *args, check=False, timeout=60, DATA_DIR=str(other))

    assert result.returncode == 1, result.stderr
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr
    line = errors[0]
    port = first.env["API_PORT"]
    assert line.startswith(
        f"[start] error: port {port} (API_PORT) on 127.0.0.1 is already taken by pid {fastapi} "
        f"(python -m app) of another stack, DATA_DIR={first.data_dir} "
        f"(supervisord pid {supervisord}); stop that stack first "
        f"(DATA_DIR={first.data_dir} make down) or set another API_PORT"
    ), line
    assert "also taken: the ports of WEB_PORT, TEMPORAL_ADDRESS, TEMPORAL_UI_PORT" in line
    assert "MINIO_ENDPOINT" in line and "LLAMA_URL" in line
    # Nothing was started for the other DATA_DIR, and the first stack carries on untouched.
    assert not (other / "supervisord.pid").exists()
    assert not (other / "logs" / "fastapi.log").exists()
    assert first.health()["status"] == "ok"
    assert first.program_pid("fastapi") == fastapi


def test_the_stop_command_it_prints_stops_that_stack(first: Stack, tmp_path: Path) -> None:
    """The advice works as printed, from a plain shell in the checkout."""
    result = first.script(
        "start_services.sh", check=False, timeout=60, DATA_DIR=str(tmp_path / "other-data")
    )
    match = re.search(r"stop that stack first \((.+ make down)\)", error_lines(result)[0])
    assert match is not None, result.stderr
    supervisord = int((first.data_dir / "supervisord.pid").read_text())
    plain = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    plain["ENV_FILE"] = first.env["ENV_FILE"]  # not the checkout's own .env, if it has one
    stopped = subprocess.run(
        ["bash", "-c", match[1]],
        cwd=REPO_ROOT,
        env=plain,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert "[stop] stopped" in stopped.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(supervisord, 0)
    # The ports are free again: the second stack's dry run now passes the check.
    again = first.script(
        "start_services.sh", "--dry-run", check=False, DATA_DIR=str(tmp_path / "other-data")
    )
    assert again.returncode == 0, again.stderr
    assert "ports free" in again.stderr
