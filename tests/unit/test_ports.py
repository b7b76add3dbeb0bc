"""deploy/instance/ports.py: which ports a stack binds, and who holds a taken one."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.instance import ports
from kernel.config import Settings, load_settings


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **values: str) -> Settings:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return load_settings(env_file)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_the_owner_of_a_listening_socket_is_found_with_its_pid(
    listening: socket.socket,
) -> None:
    port = listening.getsockname()[1]
    error = ports.bind_error("127.0.0.1", port)
    assert error is not None and error.errno == errno.EADDRINUSE
    found = ports.holder(port, "127.0.0.1")
    assert found is not None
    assert found.pid == os.getpid()
    assert "python" in found.command
    assert found.data_dir is None  # pytest is no program of a stack


def test_a_free_port_has_no_owner_and_binds() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert ports.bind_error("127.0.0.1", port) is None
    assert ports.holder(port, "127.0.0.1") is None


def test_addresses_of_proc_net_tcp() -> None:
    assert ports._address("0100007F") == "127.0.0.1"
    assert ports._address("00000000") == "0.0.0.0"
    assert ports._address("00000000000000000000000001000000") == "::1"


def test_local_mode_binds_every_server_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load(tmp_path, monkeypatch, DEPLOY_MODE="local", WORKER_GPU_METRICS_PORT="9465")
    found = {(b.setting, b.port) for b in ports.bindings(settings, "weed")}
    assert {
        ("API_PORT", 8000),
        ("WEB_PORT", 3000),
        ("TEMPORAL_ADDRESS", 7233),
        ("TEMPORAL_UI_PORT", 8233),
        ("MINIO_ENDPOINT", 9000),
        ("MINIO_ENDPOINT", 9009),  # SeaweedFS's admin gRPC
        ("LLAMA_URL", 8080),
        ("WORKER_GPU_METRICS_PORT", 9465),
    } <= found
    assert ("MINIO_CONSOLE_PORT", 9001) not in found
    minio = {(b.setting, b.port) for b in ports.bindings(settings, "minio")}
    assert ("MINIO_CONSOLE_PORT", 9001) in minio and ("MINIO_ENDPOINT", 9009) not in minio


def test_hybrid_mode_binds_only_what_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load(tmp_path, monkeypatch, DEPLOY_MODE="hybrid")
    assert [b.setting for b in ports.bindings(settings, "weed")] == ["API_PORT"]
    with_model = load(tmp_path, monkeypatch, LLAMA_MODEL="m.gguf", LLAMA_URL="http://127.0.0.1:81")
    assert [(b.setting, b.port) for b in ports.bindings(with_model, "weed")] == [
        ("API_PORT", 8000),
        ("LLAMA_URL", 81),
    ]


def test_two_programs_given_one_port_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load(tmp_path, monkeypatch, DEPLOY_MODE="local", WEB_PORT="8000")
    problem = ports.check(settings, "weed")
    assert problem == "WEB_PORT and API_PORT both use port 8000: give each program its own port"


def test_a_port_held_by_another_process_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listening: socket.socket
) -> None:
    port = listening.getsockname()[1]
    settings = load(tmp_path, monkeypatch, API_PORT=str(port))
    problem = ports.check(settings, "weed")
    assert problem == (
        f"port {port} (API_PORT) on 127.0.0.1 is already taken by pid {os.getpid()} "
        f"({ports._command(os.getpid(), ports.PROC)}); stop it or set another API_PORT"
    )


def test_a_port_held_by_another_stack_names_its_data_dir_and_stop_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program of another stack: its environment has the DATA_DIR its supervisord gave it."""
    other = tmp_path / "other data"
    other.mkdir()
    program = textwrap.dedent(
        """
        import socket, sys
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        print(sock.getsockname()[1], flush=True)
        sys.stdin.read()
        """
    )
    env = {**os.environ, "DATA_DIR": str(other), "SUPERVISOR_SOCKET": str(other / "s.sock")}
    process = subprocess.Popen(
        [sys.executable, "-c", program],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        # The stand-in holder is also that stack's supervisord.
        (other / "supervisord.pid").write_text(f"{process.pid}\n")
        settings = load(tmp_path, monkeypatch, API_PORT=str(port))
        problem = ports.check(settings, "weed")
        assert problem is not None
        assert problem.startswith(
            f"port {port} (API_PORT) on 127.0.0.1 is already taken by pid {process.pid} (python"
        ), problem
        assert f"of another stack, DATA_DIR={other} (supervisord pid {process.pid})" in problem
        assert f"stop that stack first (DATA_DIR='{other}' make down) or set another API_PORT" in (
            problem
        )
        assert "\n" not in problem
        # Its supervisord gone, the program is a leftover to stop by pid.
        (other / "supervisord.pid").write_text("999999999\n")
        leftover = ports.check(settings, "weed")
        assert leftover is not None
        assert f"left over from the stack with DATA_DIR={other} (its supervisord is gone)" in (
            leftover
        )
        assert f"stop it (kill {process.pid}) or set another API_PORT" in leftover
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)
