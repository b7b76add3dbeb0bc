"""Preflight: this machine can reach the instance, and the instance runs the project's image.

Nothing is written on the instance here; a failure is one line that says what to fix.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
from pathlib import Path

from deploy.console import DeployError, log, warn
from deploy.remote import Remote, shipped_python
from deploy.settings import DeploySettings, image_hint
from kernel.config import PROJECT_ROOT

INSTANCE_CODE = Path(__file__).resolve().parent / "instance"
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^]]*\])?==[^\s;#]+")
_PUBLIC_KEY = re.compile(r"^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+")

RUNTIME_CHECK = """missing=()
[[ -x "${INSTANCE_VENV}/bin/python" ]] || missing+=("${INSTANCE_VENV}/bin/python")
[[ -x "${INSTANCE_VENV}/bin/supervisord" ]] || missing+=("${INSTANCE_VENV}/bin/supervisord")
command -v rsync >/dev/null || missing+=(rsync)
command -v flock >/dev/null || missing+=(flock)
if ((${#missing[@]})); then echo "missing ${missing[*]}"; exit 0; fi
parent="$REMOTE_DIR"
while [[ ! -e "$parent" ]]; do parent="$(dirname "$parent")"; done
[[ -d "$parent" && -w "$parent" ]] || { echo "unwritable ${parent}"; exit 0; }
"""


def check_local_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise DeployError(
                f"{tool} is not installed on this machine (it is needed to reach the instance)"
            )


def check_key(key: Path) -> None:
    """The private key exists, is readable, is not the public half, and is not open to
    other users (ssh would refuse it with a less helpful message)."""
    if not key.exists():
        raise DeployError(f"VAST_SSH_KEY: no key at {key}")
    if not key.is_file() or not os.access(key, os.R_OK):
        raise DeployError(f"VAST_SSH_KEY: {key} is not a readable file")
    first = key.read_bytes()[:4096].decode(errors="replace").partition("\n")[0]
    if key.name.endswith(".pub") or _PUBLIC_KEY.match(first):
        pair = str(key).removesuffix(".pub")
        raise DeployError(
            f"VAST_SSH_KEY: {key} is a public key; point VAST_SSH_KEY at the private key "
            f"({pair} if that is its pair)"
        )
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise DeployError(
            f"VAST_SSH_KEY: {key} is accessible by other users (mode {mode:o}); run: "
            f"chmod 600 {shlex.quote(str(key))}"
        )


def prepare_ssh(settings: DeploySettings, *tools: str) -> None:
    """Everything an SSH connection needs on this side: the tools, a usable key and the
    project's own known_hosts (host keys are recorded on first use: accept-new)."""
    check_local_tools("ssh", *tools)
    check_key(settings.ssh_key)
    settings.known_hosts.parent.mkdir(parents=True, exist_ok=True)
    settings.known_hosts.touch()


def pins(requirements: Path) -> list[str]:
    if not requirements.is_file():
        return []
    found = []
    for line in requirements.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            found.append(match[0])
    return found


def runtime_script(pinned: list[str]) -> str:
    """The read-only runtime check: prints `missing ...`, `unwritable DIR`, `drift ...`
    lines (requirements.py, shipped on stdin) and `ok`."""
    script = RUNTIME_CHECK
    if pinned:
        args = '"${INSTANCE_VENV}" ' + " ".join(shlex.quote(pin) for pin in pinned)
        script += "runtime_drift() {\n"
        script += shipped_python(INSTANCE_CODE / "requirements.py", args)
        script += '}\n{ runtime_drift || true; } | sed "s/^/drift /"\n'
    return script + "echo ok\n"


def preflight(remote: Remote) -> None:
    settings = remote.settings
    log(f"preflight: {settings.where} -> {settings.remote_dir} (mode {settings.mode})")
    prepare_ssh(settings, "rsync")
    remote.connect()
    script = runtime_script(pins(PROJECT_ROOT / "requirements.instance.txt"))
    rc, output = remote.probe("runtime check", script)
    lines = output.splitlines()
    if rc != 0:
        raise DeployError(
            f"the runtime check on the instance failed (exit {rc}): {lines[-1] if lines else ''}"
        )
    if output.startswith("missing "):
        raise DeployError(
            f"the instance lacks {lines[0].removeprefix('missing ')}: it does not run the "
            f"project's image; use {image_hint(settings.stack.VAST_IMAGE)} (or set INSTANCE_VENV)"
        )
    if output.startswith("unwritable "):
        raise DeployError(
            f"REMOTE_DIR {settings.remote_dir} cannot be created: "
            f"{lines[0].removeprefix('unwritable ')} is not writable by {settings.user}"
        )
    drift = [line.removeprefix("drift ") for line in lines if line.startswith("drift ")]
    if drift:
        warn(
            "the instance's runtime differs from requirements.instance.txt (no pip install is "
            "done; rebuild or pull the image):"
        )
        for line in drift:
            log(f"  {line}")
    log(f"preflight: ok (ssh, key, {settings.instance_venv}, rsync and flock on the instance)")
