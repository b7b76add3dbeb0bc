"""The one way anything reaches the instance: `Remote`.

Every remote command is built as data (an argv and the script it feeds on standard input)
before it runs, so `--dry-run` prints what would change the instance instead of running it,
and the unit tests read the commands as strings. Read-only probes run even in a dry run.

    probe(desc, script)      read-only check; runs even with --dry-run
    run(desc, script)        changes the instance; --dry-run prints desc and script
    secret(desc, script)     script holds a secret; --dry-run prints desc only
    session(desc, script)    script as the remote command, this side's stdin a pipe (the lock)
    attached(desc, script)   attached to this terminal (shell, logs -f); the remote status
    tunnel_argv(args)        ssh -N ARGS, for deploy.tunnel
    rsync(args)              rsync over the same SSH connection (--dry-run added)

Every script starts with `prelude()`: bash strict mode, REMOTE_DIR, INSTANCE_VENV and
`in_project` (cd to REMOTE_DIR, load the deployed project's settings; exit 3 when nothing is
deployed there). Values travel as quoted shell words, never as code.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.console import DeployError, indent, log, out, trace
from deploy.settings import DeploySettings

SSH_LOST = 255
NOT_DEPLOYED = 3

_PRELUDE = """in_project() {
  cd -- "$REMOTE_DIR" 2>/dev/null || { echo "nothing is deployed in ${REMOTE_DIR}" >&2; exit 3; }
  [[ -f scripts/lib/common.sh ]] || { echo "${REMOTE_DIR} holds no deployed project" >&2; exit 3; }
  # shellcheck disable=SC1091
  source scripts/lib/common.sh
  LOG_PREFIX=instance
  load_settings
}
"""


def prelude(remote_dir: str, instance_venv: str) -> str:
    """Definitions every remote script starts with (never printed by --dry-run)."""
    return (
        "set -euo pipefail\n"
        f"REMOTE_DIR={shlex.quote(remote_dir)}\n"
        f"export INSTANCE_VENV={shlex.quote(instance_venv)}\n" + _PRELUDE
    )


def assign(**values: str | int) -> str:
    """`name=value` lines with every value quoted as one shell word."""
    return "".join(f"{name}={shlex.quote(str(value))}\n" for name, value in values.items())


def explain_ssh_failure(errors: str, settings: DeploySettings) -> str:
    """ssh's complaint as one line that says what to do."""
    lines = [line for line in errors.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    host, port = settings.host, settings.port

    def has(*fragments: str) -> bool:
        return any(fragment in errors for fragment in fragments)

    if has("Could not resolve hostname", "Name or service not known", "nodename nor servname"):
        return f"cannot resolve VAST_HOST '{host}': check the host name in the Vast console"
    if has("Connection refused"):
        return (
            f"nothing accepts SSH at {host} port {port} (connection refused): check VAST_PORT "
            "and that the instance is running"
        )
    if has("timed out"):
        return (
            f"no answer from {host} port {port} within {settings.stack.DEPLOY_SSH_TIMEOUT}s: "
            "the instance may be stopped, or VAST_HOST/VAST_PORT is wrong"
        )
    if has("No route to host", "Network is unreachable"):
        return f"cannot reach {host} port {port} ({last}): check VAST_HOST and your network"
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed"):
        return (
            f"the host key of {host}:{port} differs from the one recorded in "
            ".deploy/known_hosts (a new instance on the same address?); if expected, run: "
            f"ssh-keygen -f .deploy/known_hosts -R '[{host}]:{port}'"
        )
    if has("Permission denied", "Too many authentication failures"):
        return (
            f"{settings.user}@{host} refused the key {settings.ssh_key}: add its public key "
            "to your Vast account (then restart the instance) or check VAST_USER"
        )
    if has("Connection closed", "Connection reset", "kex_exchange_identification"):
        return (
            f"{host} port {port} closed the connection ({last}): the instance may still be "
            "starting; try again in a minute"
        )
    if has("forwarding failed", "cannot listen to port", "Could not request local forwarding"):
        return (
            f"the tunnel could not forward a port ({last}): a port is taken, on this machine "
            "or on the instance"
        )
    if has("Load key", "invalid format", "bad permissions"):
        return f"ssh cannot use VAST_SSH_KEY {settings.ssh_key}: {last}"
    return f"cannot connect to {settings.where}: {last or 'ssh failed'}"


@dataclass(frozen=True)
class Call:
    """One local command: its argv and what it reads on standard input."""

    argv: tuple[str, ...]
    stdin: str | None = None


@dataclass
class Remote:
    settings: DeploySettings
    dry_run: bool = False
    ctl_dir: Path | None = None
    mux_ready: bool = False
    _children: list[subprocess.Popen[str]] = field(default_factory=list)

    # -- commands as data -------------------------------------------------------------

    def ssh_options(self) -> list[str]:
        s = self.settings
        return [
            "-p",
            str(s.port),
            "-i",
            str(s.ssh_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={s.known_hosts}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "HashKnownHosts=no",
            "-o",
            f"ConnectTimeout={s.stack.DEPLOY_SSH_TIMEOUT}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
            "-o",
            "LogLevel=ERROR",
        ]

    def ssh(self) -> list[str]:
        """ssh with this run's options, over the shared connection once it is open."""
        argv = ["ssh", *self.ssh_options()]
        if self.mux_ready and self.ctl_dir is not None:
            argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={self.ctl_dir / 'mux'}"]
        return argv

    def script(self, body: str) -> str:
        return (
            prelude(self.settings.remote_dir, self.settings.instance_venv)
            + body.rstrip("\n")
            + "\n"
        )

    def stdin_call(self, body: str) -> Call:
        """`ssh TARGET bash -s` reading the script on standard input."""
        return Call((*self.ssh(), self.settings.target, "bash", "-s"), self.script(body))

    def command_call(self, body: str, tty: bool = False) -> Call:
        """The script as the remote command (`bash -c SCRIPT`), standard input left free."""
        flag = "-t" if tty else "-T"
        remote = f"bash -c {shlex.quote(self.script(body))}"
        return Call((*self.ssh(), flag, self.settings.target, remote))

    def rsync_call(self, args: Sequence[str]) -> Call:
        words = []
        for word in self.ssh():
            if "'" in word:
                raise DeployError(
                    f"cannot pass '{word}' to rsync: remove the single quote from the path"
                )
            words.append(f"'{word}'")
        dry = ["--dry-run"] if self.dry_run else []
        return Call(("rsync", *dry, "-e", " ".join(words), *args))

    # -- running them -----------------------------------------------------------------

    def _would(self, desc: str, body: str | None = None) -> None:
        out(f"[dry-run] would run on {self.settings.where}: {desc}")
        if body is not None:
            out(indent(body.rstrip("\n")))

    def _lost(self, rc: int) -> None:
        if rc == SSH_LOST:
            raise DeployError(f"lost the SSH connection to {self.settings.where}")

    def capture(self, call: Call) -> subprocess.CompletedProcess[str]:
        trace(call.argv)
        return subprocess.run(
            call.argv, input=call.stdin, stdout=subprocess.PIPE, text=True, check=False
        )

    def probe(self, desc: str, body: str) -> tuple[int, str]:
        """A read-only check; (exit status, stdout). Dies when the connection was lost."""
        result = self.capture(self.stdin_call(body))
        self._lost(result.returncode)
        return result.returncode, result.stdout

    def secret(self, desc: str, body: str, read_only: bool = False) -> tuple[int, str]:
        """A script holding a secret: a dry run shows only `desc`, unless it only reads."""
        if self.dry_run and not read_only:
            out(f"[dry-run] would run on {self.settings.where}: {desc} (contents not shown)")
            return 0, ""
        result = self.capture(self.stdin_call(body))
        return result.returncode, result.stdout

    def run(self, desc: str, body: str, on_line: Callable[[str], None] | None = None) -> int:
        """A script that changes the instance. Its output goes to `on_line`, one line at a
        time, or to this process's stdout."""
        if self.dry_run:
            self._would(desc, body)
            return 0
        call = self.stdin_call(body)
        trace(call.argv)
        if on_line is None:
            return subprocess.run(call.argv, input=call.stdin, text=True, check=False).returncode
        with subprocess.Popen(
            call.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(call.stdin or "")
            process.stdin.close()
            for line in process.stdout:
                on_line(line.rstrip("\n"))
            return process.wait()

    def session(self, desc: str, body: str) -> subprocess.Popen[str]:
        """The script as the remote command, with a pipe for its stdin and stdout: it runs
        until this side closes the pipe (the lock holder)."""
        call = self.command_call(body)
        trace(call.argv)
        process = subprocess.Popen(
            call.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._children.append(process)
        return process

    def attached(self, desc: str, body: str) -> int:
        """Attached to this terminal; returns the remote status, dies when the connection
        is lost."""
        if self.dry_run:
            self._would(desc, body)
            return 0
        call = self.command_call(body, tty=sys.stdin.isatty() and sys.stdout.isatty())
        trace(call.argv)
        rc = subprocess.run(call.argv, check=False).returncode
        self._lost(rc)
        return rc

    def rsync(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if self.dry_run:
            print(f"[dry-run] rsync --dry-run to {self.settings.rsync_target}", file=sys.stderr)
        return self.capture(self.rsync_call(args))

    # -- the shared connection ----------------------------------------------------------

    def temp_dir(self) -> Path:
        if self.ctl_dir is None:
            self.ctl_dir = Path(tempfile.mkdtemp(prefix="deploy-vast.", dir="/tmp"))
        return self.ctl_dir

    def connect(self) -> None:
        """Opens the shared SSH connection every later command of this run reuses."""
        ctl = self.temp_dir()
        if self.dry_run:
            log(f"dry run: read-only checks still connect to {self.settings.where}")
        argv = [
            *self.ssh(),
            "-o",
            "ControlMaster=yes",
            "-o",
            f"ControlPath={ctl / 'mux'}",
            "-o",
            "ControlPersist=60",
            "-f",
            "-N",
            self.settings.target,
        ]
        trace(argv)
        # -f: ssh forks once connected; its output goes to a file, not our pipes (a pipe
        # would stay open in the background master).
        with open(ctl / "connect.log", "w") as errors:
            rc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors, check=False
            ).returncode
        if rc != 0:
            raise DeployError(explain_ssh_failure((ctl / "connect.log").read_text(), self.settings))
        self.mux_ready = True

    def close(self) -> None:
        for process in self._children:
            if process.poll() is None:
                process.terminate()
                process.wait()
        if self.ctl_dir is None:
            return
        if self.mux_ready:
            argv = [
                "ssh",
                *self.ssh_options(),
                "-o",
                f"ControlPath={self.ctl_dir / 'mux'}",
                "-O",
                "exit",
                self.settings.target,
            ]
            subprocess.run(argv, capture_output=True, check=False)
            self.mux_ready = False
        shutil.rmtree(self.ctl_dir, ignore_errors=True)
        self.ctl_dir = None


def shipped_python(path: Path, args: str) -> str:
    """A line of remote script that runs `path` (a standard-library-only module of
    deploy/instance/) from this checkout with the instance's python, fed on stdin: for
    before the code is synced. `args` are shell words (they may name the script's
    variables)."""
    text = path.read_text()
    if "\nINSTANCE_PY\n" in f"\n{text}\n":
        raise DeployError(f"internal: {path} holds the line INSTANCE_PY")
    return f"\"${{INSTANCE_VENV}}/bin/python\" - {args} <<'INSTANCE_PY'\n{text}INSTANCE_PY\n"
