"""Sync: the code to REMOTE_DIR with rsync, then the env file as REMOTE_DIR/.env (mode 600).

Never sent: version control, the deploy's own state, env files, data, models, logs,
virtualenvs, keys and caches (RSYNC_FILTERS), nor this run's SSH key and env file wherever
they sit, nor DATA_DIR inside the repository (which --delete never touches either).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from deploy.console import DeployError, log, out
from deploy.remote import Remote, assign
from deploy.settings import DeploySettings
from kernel.config import PROJECT_ROOT

# data, models, logs and virtualenvs without a trailing slash: a symlink of that name (a
# checkout sharing its .venv or models/) is left out too, rather than sent in place of the
# instance's folder (rsync cannot, and stops).
RSYNC_FILTERS = (
    "--filter=- /.git/",
    "--filter=- /.deploy/",
    "--filter=- /.env",
    "--filter=+ /.env.example",
    "--filter=- /.env.*",
    "--filter=- /data",
    "--filter=- /models",
    "--filter=- /logs",
    "--filter=- *.gguf",
    "--filter=- *.pem",
    "--filter=- *.key",
    "--filter=- id_*",
    "--filter=- .venv",
    "--filter=- venv",
    "--filter=- .venv-*",
    "--filter=-p __pycache__/",
    "--filter=-p *.py[cod]",
    "--filter=-p .mypy_cache/",
    "--filter=-p .ruff_cache/",
    "--filter=-p .pytest_cache/",
    "--filter=-p .cache/",
    "--filter=-p *.egg-info/",
    "--filter=-p .coverage",
    "--filter=-p htmlcov/",
    "--filter=-p node_modules/",
    "--filter=-p .DS_Store",
)
RSYNC_OPTIONS = (
    "-rlptDz",
    "-s",
    "--delete",
    "--no-owner",
    "--no-group",
    "--itemize-changes",
    "--out-format=%i %n",
)
SHOWN_CHANGES = 8


def rsync_literal(path: str) -> str:
    """An rsync filter pattern that matches `path` literally (wildcards escaped)."""
    if any(c in path for c in "*?["):
        for char in ("\\", "*", "?", "["):
            path = path.replace(char, "\\" + char)
    return path


def repo_relative(path: Path, root: Path = PROJECT_ROOT) -> str | None:
    """`path` relative to the repository when it lies inside it (its folder resolved)."""
    try:
        folder = path.parent.resolve(strict=True)
    except OSError:
        return None
    full = folder / path.name
    for base in (root, root.resolve()):
        if full.is_relative_to(base) and full != base:
            return full.relative_to(base).as_posix()
    return None


def secret_filters(settings: DeploySettings, root: Path = PROJECT_ROOT) -> list[str]:
    """The SSH key and the env file are never sent, even inside the repository (nor what a
    symlink of either points to); DATA_DIR inside it is neither sent nor deleted."""
    filters = []
    for given in (settings.ssh_key, settings.env_file):
        candidates = [given]
        if given.is_symlink():
            candidates.append(Path(os.path.realpath(given)))
        for path in candidates:
            relative = repo_relative(path, root)
            if relative is None:
                continue
            if "\n" in relative:
                raise DeployError(f"cannot exclude {path} from the sync: its name holds a newline")
            filters.append(f"--filter=- /{rsync_literal(relative)}")
    if settings.data_dir_synced:
        filters.append(f"--filter=- /{rsync_literal(settings.data_dir_synced)}/")
    return filters


def rsync_args(settings: DeploySettings, root: Path = PROJECT_ROOT) -> list[str]:
    return [
        *RSYNC_OPTIONS,
        *secret_filters(settings, root),
        *RSYNC_FILTERS,
        f"{root}/",
        settings.rsync_target,
    ]


def changed_files(itemized: str) -> list[str]:
    """The paths rsync's `%i %n` lines say it changed (or would change)."""
    changed = []
    for line in itemized.splitlines():
        flags, path = line[:11], line[12:]
        if not path:
            continue
        if flags.startswith("*deleting") or (flags[:1] in "<>ch" and flags[1:2] in ("f", "L")):
            changed.append(path)
    return changed


def sync_code(remote: Remote) -> list[str]:
    """Sends the code; returns what rsync changed (or would change)."""
    settings = remote.settings
    result = remote.rsync(rsync_args(settings))
    if result.returncode != 0:
        raise DeployError(f"rsync to {settings.where}:{settings.remote_dir} failed (see above)")
    changed = changed_files(result.stdout)
    verb = "would change" if remote.dry_run else "changed"
    if not changed:
        log("sync: code is up to date")
    else:
        shown = ", ".join(changed[:SHOWN_CHANGES]) + (", ..." if len(changed) > 8 else "")
        log(f"sync: {len(changed)} file(s) {verb}: {shown}")
    return changed


ENV_UPLOAD = """target="${REMOTE_DIR}/.env"
if [[ -f "$target" ]] && base64 -d <<<"$content" | cmp -s - "$target"; then
  ((dry_run)) || chmod 600 "$target"
  echo same
elif ((dry_run)); then
  echo changed
else
  umask 077
  mkdir -p -- "$REMOTE_DIR"
  tmp="$(mktemp "${REMOTE_DIR}/.env.upload.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  base64 -d <<<"$content" >"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$target"
  echo changed
fi
"""


def env_upload_script(content: bytes, dry_run: bool) -> str:
    """The script that sends .env: its contents travel base64-encoded inside the script on
    stdin, never in a command line. Dry runs only compare."""
    encoded = base64.b64encode(content).decode()
    return assign(dry_run=int(dry_run), content=encoded) + ENV_UPLOAD


@dataclass(frozen=True)
class EnvUpload:
    changed: bool


def upload_env(remote: Remote) -> EnvUpload:
    """Sends the env file with mode 600; says whether it differed from the instance's."""
    settings = remote.settings
    script = env_upload_script(settings.env_file.read_bytes(), remote.dry_run)
    rc, output = remote.secret(".env upload", script, read_only=remote.dry_run)
    if rc != 0:
        raise DeployError(
            f"could not send .env to {settings.where}:{settings.remote_dir} (exit {rc})"
        )
    changed = "changed" in output
    if remote.dry_run:
        state = "it differs from the instance's copy" if changed else "unchanged"
        out(
            f"[dry-run] would send {settings.env_file} to {settings.remote_dir}/.env "
            f"(mode 600): {state}"
        )
    elif changed:
        log(f"env: {settings.env_file} -> {settings.remote_dir}/.env (mode 600, changed)")
    else:
        log(f"env: {settings.remote_dir}/.env is up to date (mode 600)")
    return EnvUpload(changed)
