"""A second GPU box on this machine, for the fleet test and benchmark: its own llama-server
and GPU worker (its own BOX_NAME) against a running stack's Temporal, S3 and queues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness.netns import Namespace
from harness.stack import REPO_ROOT, Stack, free_port


class Box:
    """A second GPU box on this machine: llama-server and GPU worker, stopped by pid; in
    `netns` (a network namespace of its own) when given."""

    def __init__(
        self,
        stack: Stack,
        name: str,
        slots: int,
        log_dir: Path,
        netns: Namespace | None = None,
        **extra: str,
    ) -> None:
        self.stack = stack
        self.netns = netns
        self.name = name
        self.slots = slots
        self.port = free_port()
        self.log_dir = log_dir
        self.extra = extra
        self.llama: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        return self.stack.process_env(
            {
                "BOX_NAME": self.name,
                "LLAMA_URL": f"http://127.0.0.1:{self.port}",
                "LLAMA_SERVER_BIN": os.environ.get("LLAMA_SERVER_BIN", "llama-server"),
                "LLAMA_HOST": "127.0.0.1",
                "LLAMA_PORT": str(self.port),
                "LLAMA_PARALLEL": str(self.slots),
                "LLAMA_CTX_PER_SLOT": "512",
                "LLAMA_MODEL": "models/tiny-llama.gguf",
                "WORKER_IDLE_EXIT_SECONDS": "0",
                **self.extra,
            }
        )

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        if self.netns is not None:
            return self.netns.popen(args, self.log_dir / log, self._env(), cwd=REPO_ROOT)
        with open(self.log_dir / log, "ab") as out:
            return subprocess.Popen(
                args, cwd=REPO_ROOT, env=self._env(), stdout=out, stderr=subprocess.STDOUT
            )

    def start(self) -> None:
        self.start_llama()
        self.worker = self._spawn(
            [sys.executable, "-m", "workers", "--queue", "gpu"], f"{self.name}-worker.log"
        )

    def start_llama(self) -> None:
        """llama-server (exec'd by the script: its pid is the server's), once it answers."""
        self.llama = self._spawn(
            ["bash", "scripts/run_program.sh", "llama"], f"{self.name}-llama.log"
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.llama_answers():
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name}'s llama-server did not come up")

    def llama_answers(self) -> bool:
        """Whether llama-server answers /health 200 (asked from inside its namespace)."""
        url = f"http://127.0.0.1:{self.port}/health"
        if self.netns is not None:
            code = f"import urllib.request as u; u.urlopen({url!r}, timeout=2)"
            return self.netns.run([sys.executable, "-c", code]).returncode == 0
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_log_size(self) -> int:
        path = self.log_dir / f"{self.name}-worker.log"
        return path.stat().st_size if path.exists() else 0

    def wait_worker_log(self, text: str, since: int, timeout: float = 60.0) -> None:
        """Waits until the worker's log, past byte `since`, says `text`."""
        path = self.log_dir / f"{self.name}-worker.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(path, "rb") as log:
                log.seek(since)
                if text.encode() in log.read():
                    return
            time.sleep(0.5)
        raise AssertionError(f"{self.name}'s worker never logged {text!r} within {timeout:g}s")

    def running(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self.worker, self.llama))

    def ensure_running(self) -> None:
        """Both processes up: what an earlier test killed or stopped is started afresh."""
        if not self.running():
            self.stop()
            self.start()

    def kill_llama(self) -> None:
        """llama-server gone (SIGKILL), the box's worker left alive."""
        if self.llama is not None and self.llama.poll() is None:
            os.kill(self.llama.pid, signal.SIGKILL)
            self.llama.wait(timeout=30)

    def pause(self) -> None:
        """The whole box unreachable, as behind a network partition: worker and llama-server
        frozen (SIGSTOP), their connections open, no heartbeat, no answer."""
        for process in (self.worker, self.llama):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        for process in (self.llama, self.worker):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """The whole box gone at once: no graceful shutdown, no last heartbeat."""
        for process in (self.worker, self.llama):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    def stop(self) -> None:
        for process in (self.worker, self.llama):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a paused process cannot stop
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
