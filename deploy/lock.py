"""The instance's deploy lock: a remote `flock` held by an SSH session whose stdin is a pipe
from this process, so it is released when this process ends, however it ends.

Two deploys (or a deploy and a stop) never overlap on one instance: the second waits up to
DEPLOY_LOCK_TIMEOUT seconds, saying who holds it, then gives up.
"""

from __future__ import annotations

import datetime
import os
import queue
import socket
import subprocess
import threading

from deploy.console import DeployError, log, out
from deploy.remote import Remote, assign

LOCK_SCRIPT = """mkdir -p -- "${REMOTE_DIR}/.deploy"
chmod 700 "${REMOTE_DIR}/.deploy"
exec 9>>"${REMOTE_DIR}/.deploy/lock"
if ! flock -n 9; then
  echo "waiting $(cat "${REMOTE_DIR}/.deploy/lock.owner" 2>/dev/null || echo another deploy)"
  flock -w "$timeout" 9 || { echo timeout; exit 75; }
fi
printf '%s\\n' "$owner" >"${REMOTE_DIR}/.deploy/lock.owner"
echo locked
exec cat >/dev/null
"""


def owner() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{socket.gethostname() or 'unknown'} pid {os.getpid()} since {now}"


def lock_script(timeout: int, holder: str) -> str:
    return assign(timeout=timeout, owner=holder) + LOCK_SCRIPT


class RemoteLock:
    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.process: subprocess.Popen[str] | None = None
        self.held = False

    @property
    def path(self) -> str:
        return f"{self.remote.settings.remote_dir}/.deploy/lock"

    def acquire(self) -> None:
        settings = self.remote.settings
        if self.remote.dry_run:
            out(f"[dry-run] would take the deploy lock {self.path} on {settings.where}")
            return
        timeout = settings.stack.DEPLOY_LOCK_TIMEOUT
        self.process = self.remote.session("deploy lock", lock_script(timeout, owner()))
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = settings.stack.DEPLOY_SSH_TIMEOUT + 30
        while True:
            try:
                line = lines.get(timeout=deadline)
            except queue.Empty:
                line = None
            if line is None:
                raise DeployError(
                    f"could not take the deploy lock on {settings.where}: the SSH session "
                    "ended or stopped answering"
                )
            if line == "locked":
                self.held = True
                log(f"lock: acquired {self.path}")
                return
            if line.startswith("waiting "):
                log(
                    f"lock: another deploy holds the instance ({line.removeprefix('waiting ')});"
                    f" waiting up to {timeout}s (DEPLOY_LOCK_TIMEOUT)"
                )
                deadline = timeout + 30
            elif line == "timeout":
                raise DeployError(
                    f"another deploy still holds the lock on {settings.where} after {timeout}s; "
                    "try again when it is done, or raise DEPLOY_LOCK_TIMEOUT"
                )
            elif line:
                log(f"lock: {line}")

    def release(self) -> None:
        """End of input ends the remote holder, which releases the flock."""
        process, self.process = self.process, None
        if process is None:
            return
        if self.held:
            self.held = False
            log("lock: released")
        if process.stdin is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
