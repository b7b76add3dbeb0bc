"""The whole stack, started by the project's own launcher on free ports in a temp folder.

Used by the integration tests and the benchmarks. Every server binds 127.0.0.1; `stop()`
stops supervisord by its pid (scripts/stop_services.sh), which stops every program.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from minio import Minio

from kernel.supervisor import SupervisorControl

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(size: int, low: int = 20000, high: int = 30000) -> int:
    """The first port of `size` consecutive free ports (SeaweedFS uses S3_PORT..+9)."""
    for start in range(low + (os.getpid() * 37) % (high - low), high, size):
        ports = range(start, start + size)
        try:
            sockets = []
            for port in ports:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return start
    raise RuntimeError("no block of free ports")


def stack_environment(data_dir: Path, **overrides: str) -> dict[str, str]:
    s3_port = free_port_block(10)
    env = {
        "DEPLOY_MODE": "local",
        "INSTANCE_VENV": sys.prefix,
        "DATA_DIR": str(data_dir),
        "ENV_FILE": str(data_dir.parent / "empty.env"),
        "API_HOST": "127.0.0.1",
        "API_PORT": str(free_port()),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "TEMPORAL_UI_PORT": str(free_port()),
        "MINIO_ENDPOINT": f"127.0.0.1:{s3_port}",
        "MINIO_ACCESS_KEY": "test-access",
        "MINIO_SECRET_KEY": "test-secret-key",
        "LLAMA_URL": f"http://127.0.0.1:{free_port()}",
        "WEB_PORT": str(free_port()),
        "CPU_TASK_QUEUE": f"cpu-{os.getpid()}",
        "GPU_TASK_QUEUE": f"gpu-{os.getpid()}",
        "LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


@dataclass
class Stack:
    env: dict[str, str]
    data_dir: Path
    started_seconds: float = 0.0
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.env['WEB_PORT']}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def process_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ENV_FILE",)}
        env.update(self.env)
        env.update(extra or {})
        return env

    def script(
        self, name: str, *args: str, check: bool = True, timeout: float = 120, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / name), *args],
            cwd=REPO_ROOT,
            env=self.process_env(extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def supervisorctl(self, *args: str) -> str:
        result = self.script("supervisorctl.sh", *args, check=False)
        return result.stdout + result.stderr

    @property
    def http(self) -> httpx.Client:
        if self._client is None:
            headers = {}
            if self.env.get("API_KEY"):
                headers["Authorization"] = f"Bearer {self.env['API_KEY']}"
            self._client = httpx.Client(base_url=self.api_url, timeout=30, headers=headers)
        return self._client

    def s3(self) -> Minio:
        return Minio(
            self.env["MINIO_ENDPOINT"],
            access_key=self.env["MINIO_ACCESS_KEY"],
            secret_key=self.env["MINIO_SECRET_KEY"],
            secure=False,
        )

    def health(self) -> dict[str, Any]:
        response = self.http.get("/health", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def wait_healthy(self, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.health()
                if last["status"] == "ok":
                    return dict(last)
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.25)
        raise AssertionError(
            f"stack not healthy after {timeout}s: {json.dumps(last, indent=1)}\n{self.logs_tail()}"
        )

    def program(self, name: str) -> dict[str, Any]:
        programs: dict[str, Any] = self.health()["checks"]["supervisor"]["programs"]
        return dict(programs[name])

    def supervisor(self) -> SupervisorControl:
        return SupervisorControl(self.data_dir / "supervisor.sock")

    def program_pid(self, name: str) -> int:
        """The program's pid over supervisord's socket (0 when it is not running)."""
        return asyncio.run(self.supervisor().programs())[name].pid

    def wait_program_state(self, name: str, states: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.supervisorctl("status", name).split()[1]
            if state in states:
                return state
            time.sleep(0.2)
        raise AssertionError(f"{name} is {state}, expected one of {states}")

    def logs_tail(self, lines: int = 30) -> str:
        chunks = []
        for log in sorted(self.log_dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(chunks)

    def start(self) -> None:
        self.data_dir.parent.joinpath("empty.env").touch()
        started = time.monotonic()
        result = self.script("start_services.sh", check=False)
        if result.returncode != 0:
            raise AssertionError(f"start_services.sh failed:\n{result.stderr}")
        self.wait_healthy()
        self.started_seconds = time.monotonic() - started

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self.script("stop_services.sh", check=False, timeout=120)


def start_stack(base: Path, **overrides: str) -> Stack:
    data_dir = base / "data"
    stack = Stack(env=stack_environment(data_dir, **overrides), data_dir=data_dir)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack
