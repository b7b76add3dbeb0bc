"""The deploy's settings: `kernel.config.Settings` read from one env file, checked with the
messages the README documents.

The env file describes the instance. Only the deploy's own settings (DEPLOY_KEYS: where the
instance is, timeouts, the tunnel's local ends) may come from this shell's environment, which
then wins; the stack's settings (DEPLOY_MODE, INSTANCE_VENV, ports...) come from the file
only, because that file is what the instance runs with. Nothing else parses the file.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deploy.console import DeployError
from kernel.config import PROJECT_ROOT, Settings, describe_error, load_from_file

DEPLOY_KEYS = (
    "VAST_HOST",
    "VAST_PORT",
    "VAST_SSH_KEY",
    "VAST_USER",
    "VAST_IMAGE",
    "REMOTE_DIR",
    "DEPLOY_LOCK_TIMEOUT",
    "DEPLOY_SSH_TIMEOUT",
    "HEALTH_TIMEOUT",
    "TUNNEL_API_PORT",
    "TUNNEL_WEB_PORT",
    "TUNNEL_S3_CONSOLE_PORT",
    "TUNNEL_TEMPORAL_TARGET",
    "TUNNEL_S3_TARGET",
)
# The image the README names; offers and the wrong-image message print it unless VAST_IMAGE
# is set (ghcr.io/OWNER/REPO when this checkout's origin is on GitHub).
DEFAULT_IMAGE = "ghcr.io/<owner>/<repo>:stable"
# The settings part of --help.
SETTINGS_HELP = f"""
Flags:
  --dry-run            print every command that would change the instance, run rsync with
                       --dry-run, change nothing (read-only checks still run)
  --env-file FILE      read settings from FILE instead of .env
  -h, --help           this help

Settings (.env; the ones marked * may also come from the environment, which wins):
  VAST_HOST*, VAST_PORT*, VAST_SSH_KEY*  SSH host, port and private key of the instance (required)
  VAST_USER* (root)  REMOTE_DIR* (/workspace)  INSTANCE_VENV (/opt/venv)  DEPLOY_MODE (hybrid)
  DATA_DIR (data)             never synced, never deleted on the instance by the sync
  DEPLOY_LOCK_TIMEOUT* (600)  seconds to wait for another deploy holding the instance's lock
  DEPLOY_SSH_TIMEOUT* (15)    SSH connect timeout in seconds
  HEALTH_TIMEOUT* (300)       seconds to wait for /health after starting
  TUNNEL_API_PORT* (18000), TUNNEL_WEB_PORT* (13000), TUNNEL_S3_CONSOLE_PORT* (19001)
                              local ports of the tunnel (clear of a local stack's own)
  TUNNEL_TEMPORAL_TARGET* (127.0.0.1:7233), TUNNEL_S3_TARGET* (127.0.0.1:9000)
                              local Temporal and S3 the instance reaches through the tunnel (hybrid)
  VAST_IMAGE*                 image named by 'offers' and in error messages
                              (default {DEFAULT_IMAGE})
  DEPLOY_TRACE=1              print every command this machine runs (secrets are never printed)
  DEPLOY_PYTHON               the Python the launcher runs (default: .venv/bin/python, python3)
"""

PROGRAMS = ("fastapi", "worker-cpu", "worker-gpu", "autostop", "llama", "web", "temporal", "minio")

REQUIRED = {
    "VAST_HOST": "the SSH host of the instance (Vast console: Connect, e.g. ssh4.vast.ai)",
    "VAST_PORT": "the SSH port of the instance (the -p value of its ssh command)",
    "VAST_SSH_KEY": "the path of the private key whose public key is in your Vast account",
}
_PORTS = {
    "VAST_PORT",
    "API_PORT",
    "WEB_PORT",
    "MINIO_CONSOLE_PORT",
    "TUNNEL_API_PORT",
    "TUNNEL_WEB_PORT",
    "TUNNEL_S3_CONSOLE_PORT",
}
_SECONDS = {"DEPLOY_LOCK_TIMEOUT", "DEPLOY_SSH_TIMEOUT", "HEALTH_TIMEOUT"}
_HOST_PORTS = {"TEMPORAL_ADDRESS", "MINIO_ENDPOINT", "TUNNEL_TEMPORAL_TARGET", "TUNNEL_S3_TARGET"}
_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_GITHUB = re.compile(r"github\.com[:/]([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)$")


def word_error(error: dict[str, Any]) -> str:
    """One validation error in the deploy's words (the settings it checks itself), else as
    start-up words it."""
    loc = error.get("loc") or ()
    name = str(loc[0]) if loc else ""
    given = error.get("input")
    if name in _PORTS:
        return f"{name} must be a port number (1-65535), got '{given}'"
    if name in _SECONDS:
        return f"{name} must be a number of seconds, got '{given}'"
    if name in _HOST_PORTS:
        return f"{name} must be host:port, got '{given}'"
    if name == "DEPLOY_MODE":
        return f"DEPLOY_MODE must be one of hybrid, standalone, local; got '{given}'"
    return f"invalid setting {describe_error(error)}"


def data_dir_in_repo(data_dir: str, remote_dir: str) -> str | None:
    """DATA_DIR as a path inside the synced tree (relative to the repository), or None when
    it lies outside REMOTE_DIR. rsync --delete must never touch it."""
    if data_dir.startswith("/"):
        if not data_dir.startswith(f"{remote_dir}/"):
            return None
        data_dir = data_dir[len(remote_dir) + 1 :]
    parts: list[str] = []
    for part in data_dir.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None  # above the repository: outside the synced tree
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise DeployError(
            f"DATA_DIR must be a folder of its own, not the repository itself (got '{data_dir}')"
        )
    return "/".join(parts)


@dataclass(frozen=True)
class DeploySettings:
    """One instance's settings, checked; `stack` is what the instance runs with."""

    env_file: Path
    env_file_given: bool
    stack: Settings

    @property
    def host(self) -> str:
        return self.stack.VAST_HOST

    @property
    def port(self) -> int:
        assert self.stack.VAST_PORT is not None  # checked by load()
        return self.stack.VAST_PORT

    @property
    def user(self) -> str:
        return self.stack.VAST_USER

    @property
    def remote_dir(self) -> str:
        return self.stack.REMOTE_DIR

    @property
    def instance_venv(self) -> str:
        return self.stack.INSTANCE_VENV

    @property
    def mode(self) -> str:
        return self.stack.DEPLOY_MODE

    @cached_property
    def ssh_key(self) -> Path:
        key = self.stack.VAST_SSH_KEY
        if key.startswith("~/"):
            return Path.home() / key[2:]
        return Path(key) if key.startswith("/") else PROJECT_ROOT / key

    @cached_property
    def data_dir_synced(self) -> str | None:
        return data_dir_in_repo(str(self.stack.DATA_DIR), self.remote_dir)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def rsync_target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.remote_dir}/"

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts(self) -> Path:
        return PROJECT_ROOT / ".deploy" / "known_hosts"

    @property
    def env_file_flag(self) -> str:
        """` --env-file FILE` for the commands the summary suggests, when one was given."""
        return f" --env-file {self.env_file}" if self.env_file_given else ""


def file_values(path: Path) -> dict[str, str]:
    """The settings an env file sets (not the defaults), as strings, read by kernel.config
    from the file alone: the one reader of env files. Secrets are left out ({} when the
    file does not exist); a value kernel.config refuses raises DeployError naming it."""
    try:
        settings = load_from_file(path)
    except ValidationError as exc:
        raise DeployError(f"{path}: invalid setting {describe_error(exc.errors()[0])}") from None
    values = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None or hasattr(value, "get_secret_value"):
            continue
        # As the file wrote it: 10, not 10.0.
        whole = isinstance(value, float) and value.is_integer()
        values[name] = str(int(value)) if whole else str(value)
    return values


def env_file_path(given: str | None) -> Path:
    if given is None:
        return PROJECT_ROOT / ".env"
    path = Path(given)
    return path if path.is_absolute() else Path.cwd() / path


def load(env_file: Path, given: bool) -> DeploySettings:
    """Loads and checks every setting; nothing reaches the instance before this passes."""
    if given and not env_file.is_file():
        raise DeployError(f"--env-file: no settings file at {env_file}")
    if not given and not env_file.is_file():
        raise DeployError(
            f"no settings file at {env_file}: copy .env.example to .env and set VAST_HOST, "
            "VAST_PORT and VAST_SSH_KEY"
        )
    try:
        env_file.open("rb").close()
    except OSError:
        raise DeployError(f"{env_file} is not readable") from None
    try:
        stack = load_from_file(env_file, DEPLOY_KEYS)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [dict(error) for error in exc.errors()]
        names = [str((error.get("loc") or ("",))[0]) for error in errors]
        # The settings a deploy cannot do without first, as the README lists them.
        first = next((e for e, n in zip(errors, names, strict=True) if n in REQUIRED), errors[0])
        raise DeployError(word_error(first)) from None
    for name, hint in REQUIRED.items():
        if not getattr(stack, name):
            raise DeployError(f"{name} is not set in {env_file}: {hint}")
    check(stack)
    settings = DeploySettings(env_file, given, stack)
    _ = settings.data_dir_synced  # DATA_DIR must not be the repository itself
    return settings


def check(stack: Settings) -> None:
    """What kernel.config leaves to the deploy: values that become SSH and shell words."""
    host = stack.VAST_HOST
    if not _HOST.match(host) or host.startswith("-"):
        raise DeployError(f"VAST_HOST must be a host name or IP address, got '{host}'")
    if not _USER.match(stack.VAST_USER):
        raise DeployError(f"VAST_USER must be a user name, got '{stack.VAST_USER}'")
    remote = stack.REMOTE_DIR
    if not remote.startswith("/") or remote.endswith("/") or "\n" in remote:
        raise DeployError(
            "REMOTE_DIR must be an absolute directory path without a trailing slash, "
            f"got '{remote}'"
        )
    venv = stack.INSTANCE_VENV
    if not venv.startswith("/") or "\n" in venv:
        raise DeployError(f"INSTANCE_VENV must be an absolute path, got '{venv}'")


def image_hint(configured: str) -> str:
    """The image to rent: VAST_IMAGE, else the one this checkout publishes to GHCR, else the
    README's ghcr.io/<owner>/<repo>:stable."""
    if configured:
        return configured
    try:
        origin = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        origin = ""
    match = _GITHUB.search(origin)
    if not match:
        return DEFAULT_IMAGE
    repo = match[2].removesuffix(".git")
    return f"ghcr.io/{match[1].lower()}/{repo.lower()}:stable"
