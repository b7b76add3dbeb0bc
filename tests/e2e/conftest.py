"""Fixtures for the deploy tests: a private sshd on 127.0.0.1 and a copy of the repository.

The "instance" is this machine reached over SSH: a real sshd with its own configuration, host
key and authorized key, real rsync, and `INSTANCE_VENV` pointing at the project's virtualenv.
`deploy_vast.sh` runs from a copy of the working tree, so tests can edit code without touching
the checkout. Every server binds 127.0.0.1; every process a test starts is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.stack import free_port, free_port_block
from kernel.supervisor import RUNNING_STATES, SupervisorControl, SupervisorUnavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_VENV = REPO_ROOT / ".venv"
SSHD = Path("/usr/sbin/sshd")

# Secrets with spaces, quotes, `$` and backticks: they must reach the instance unchanged and
# never appear in the deploy's output, traced or not.
API_KEY = 'e2e api key with "double" quotes, $HOME and `hostname`'
MINIO_SECRET_KEY = "e2e s3 secret $(id) with spaces"

# Top-level paths of the checkout that are never part of a deploy's source.
_TOP_LEVEL_IGNORED = {".git", ".venv", "venv", "data", "models", "logs", ".deploy", ".env"}
_IGNORED_ANYWHERE = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "node_modules"}


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class SshServer:
    port: int
    user: str
    client_key: Path
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return (self.folder / "sshd.log").read_text(errors="replace")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A private sshd on a free port of 127.0.0.1 that accepts one generated key."""
    missing = [tool for tool in ("rsync", "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if not SSHD.exists() or missing:
        pytest.skip(
            "the deploy tests need Debian's openssh-server and rsync: "
            "apt-get install -y openssh-server rsync"
        )
    if not (INSTANCE_VENV / "bin" / "python").exists():
        pytest.skip(f"the project virtualenv is missing at {INSTANCE_VENV}; run 'make setup'")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def start_sshd(folder: Path) -> SshServer:
    """A private sshd on a free port of 127.0.0.1 that accepts one generated key (in
    `folder`); running once it answers."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"e2e-{name}",
                "-f",
                str(folder / name),
            ],
            check=True,
        )
    (folder / "client_key").chmod(0o600)
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_key'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                f"PidFile {folder / 'sshd.pid'}",
                # The keys live under a world-writable temp folder.
                "StrictModes no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "AllowTcpForwarding yes",
                "MaxStartups 50",
                "MaxSessions 50",
                "LogLevel INFO",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    with open(folder / "sshd.log", "wb") as log:
        process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config.resolve())],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = SshServer(port, getpass.getuser(), folder / "client_key", folder, process)
    try:
        wait_for(lambda: port_is_open(port) or process.poll() is not None, 15, "sshd")
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.poll() is not None:
        raise AssertionError(f"sshd exited:\n{server.log}")
    return server


def copy_source(destination: Path) -> Path:
    """The working tree without version control, virtualenvs, caches, data or secrets."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        ignored = {name for name in names if name in _IGNORED_ANYWHERE or name.endswith(".pyc")}
        if Path(folder).resolve() == REPO_ROOT:
            ignored |= {name for name in names if name in _TOP_LEVEL_IGNORED}
            ignored |= {
                name for name in names if name.startswith(".env.") and name != ".env.example"
            }
        return ignored

    shutil.copytree(REPO_ROOT, destination, ignore=ignore, symlinks=True)
    return destination


@dataclass
class DeployResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("[deploy] error:")]


@dataclass
class Deployer:
    """Runs the copy's deploy_vast.sh against the private sshd with one .env."""

    sshd: SshServer
    source: Path
    remote_dir: Path
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def env_file(self) -> Path:
        return self.source / ".env"

    @property
    def script(self) -> Path:
        return self.source / "deploy_vast.sh"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings['API_PORT']}"

    def write_env(self, path: Path | None = None, **overrides: str | None) -> Path:
        """Writes the settings (plus overrides; None drops a name) as a dotenv file."""
        values: dict[str, str | None] = {**self.settings, **overrides}
        lines = ["# written by the deploy tests"]
        for name, value in values.items():
            if value is None:
                continue
            if name in ("API_KEY", "MINIO_SECRET_KEY", "DEPLOY_MODE"):
                # Quoted the ways users quote: single quotes keep `$` and double quotes.
                quote = "'" if "'" not in value else '"'
                lines.append(f"{name}={quote}{value}{quote}")
            else:
                lines.append(f"{name}={value}")
        target = path or self.env_file
        target.write_text("\n".join(lines) + "\n")
        return target

    def process_env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 300, **env: str) -> DeployResult:
        started = time.monotonic()
        completed = subprocess.run(
            ["bash", str(self.script), *args],
            cwd=self.source,
            env=self.process_env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        result = DeployResult(
            completed.returncode, completed.stdout, completed.stderr, time.monotonic() - started
        )
        for secret in (API_KEY, MINIO_SECRET_KEY):
            assert secret not in result.output, "a secret from .env appeared in the output"
        return result

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", str(self.script), *args],
            cwd=self.source,
            env=self.process_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def instance_script(
        self, name: str, *args: str, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Runs one of the deployed scripts/ directly in REMOTE_DIR (the instance is local)."""
        return subprocess.run(
            ["bash", str(self.remote_dir / "scripts" / name), *args],
            cwd=self.remote_dir,
            env=self.process_env(INSTANCE_VENV=str(INSTANCE_VENV)),
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def program_pids(self) -> dict[str, int]:
        """supervisord's view on the instance: program -> pid (0 when not running).

        Read over the socket: `supervisorctl status` prints no pid while a program is
        STARTING, which it still is right after a fast boot (startsecs)."""
        control = SupervisorControl(self.remote_dir / "data" / "supervisor.sock")
        try:
            programs = asyncio.run(control.programs())
        except SupervisorUnavailable:
            return {}
        return {
            name: info.pid if info.state in RUNNING_STATES else 0 for name, info in programs.items()
        }

    def remote_tree(self) -> dict[str, tuple[int, float]]:
        """(mode, mtime) of every file the deploy manages, data/ and the lock owner aside."""
        if not self.remote_dir.exists():
            return {}
        tree = {}
        for path in sorted(self.remote_dir.rglob("*")):
            relative = path.relative_to(self.remote_dir).as_posix()
            if relative.startswith(("data/", "models/")) or "__pycache__" in relative:
                continue
            if relative == ".deploy/lock.owner" or not path.is_file():
                continue
            stat = path.stat()
            tree[relative] = (stat.st_mode, stat.st_mtime)
        return tree

    def stop_instance(self) -> None:
        if (self.remote_dir / "scripts" / "stop_services.sh").exists():
            self.instance_script("stop_services.sh")


def stack_settings(sshd: SshServer, remote_dir: Path) -> dict[str, str]:
    """A .env for a deploy in local mode: every port free on 127.0.0.1, data under REMOTE_DIR."""
    return {
        "VAST_HOST": "127.0.0.1",
        "VAST_PORT": str(sshd.port),
        "VAST_SSH_KEY": str(sshd.client_key),
        "VAST_USER": sshd.user,
        "REMOTE_DIR": str(remote_dir),
        "INSTANCE_VENV": str(INSTANCE_VENV),
        "DEPLOY_MODE": "local",
        "HEALTH_TIMEOUT": "240",
        "DEPLOY_LOCK_TIMEOUT": "300",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(free_port()),
        "API_KEY": API_KEY,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "TEMPORAL_UI_PORT": str(free_port()),
        "MINIO_ENDPOINT": f"127.0.0.1:{free_port_block(10)}",
        "MINIO_CONSOLE_PORT": str(free_port()),
        "MINIO_ACCESS_KEY": "e2e-access",
        "MINIO_SECRET_KEY": MINIO_SECRET_KEY,
        "LLAMA_URL": f"http://127.0.0.1:{free_port()}",
        "LLAMA_CTX_PER_SLOT": "512",
        "WEB_PORT": str(free_port()),
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def deployer(sshd: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployer]:
    """A fresh copy of the repository and a REMOTE_DIR that does not exist yet."""
    base = tmp_path_factory.mktemp("deploy")
    source = copy_source(base / "src")
    remote_dir = base / "instance" / "workspace"
    remote_dir.parent.mkdir()
    deployer = Deployer(sshd, source, remote_dir, stack_settings(sshd, remote_dir))
    deployer.write_env()
    try:
        yield deployer
    finally:
        # Whatever happened, no process is left behind on the "instance".
        deployer.stop_instance()
