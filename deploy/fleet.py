"""Deploys to, watches and stops several instances at once (a fleet).

    ./deploy_vast.sh fleet deploy|status|logs|stop|tunnel FLEETFILE [ARGS]

A fleet file lists the members, one a line: a name and the env file of that instance
(relative to the fleet file), or only the env file (the name is then its stem). `#` starts a
comment. Every member is an ordinary `./deploy_vast.sh --env-file FILE` target, run in
parallel; the fleet adds:

- BOX_NAME: a member whose env file does not set it gets the member's name, so each GPU
  worker reports its work under a name of its own. The env file the deploy uses is then a
  private copy (mode 0600) under .deploy/fleet/.
- tunnel ports: `tunnel` opens every member's tunnel at once; the local ends of its forwards
  (TUNNEL_API_PORT, TUNNEL_WEB_PORT, TUNNEL_S3_CONSOLE_PORT) that the env file leaves unset
  get ports of their own per member (8100+i, 3100+i, 9101+i).
- one summary table per command, and each member's full output in .deploy/fleet/NAME.*.log.

Settings such as VAST_HOST exported in this shell would override every member's env file:
the fleet removes them from the environment of the deploys, so each env file decides. A
member's env file is read by `kernel.config` (file only), like every other settings file.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from deploy.console import DeployError
from deploy.settings import DEPLOY_KEYS, file_values
from kernel.config import PROJECT_ROOT

WORK_DIR = PROJECT_ROOT / ".deploy" / "fleet"
PROGRAM = "./deploy_vast.sh fleet"

# Per-instance settings the deploy lets the environment override: never inherited here.
MEMBER_KEYS = DEPLOY_KEYS
TUNNEL_PORT_BASES = {
    "TUNNEL_API_PORT": 8100,
    "TUNNEL_WEB_PORT": 3100,
    "TUNNEL_S3_CONSOLE_PORT": 9101,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class FleetError(Exception):
    """The fleet file or a member's env file cannot be used; the message says where."""


def read_env_file(path: Path) -> dict[str, str]:
    """The settings a member's env file sets (deploy.settings.file_values)."""
    try:
        return file_values(path)
    except DeployError as exc:
        raise FleetError(str(exc)) from None


@dataclass
class Member:
    name: str
    env_file: Path
    index: int
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        host = self.settings.get("VAST_HOST", "?")
        return (
            f"{self.settings.get('VAST_USER', 'root')}@{host}:{self.settings.get('VAST_PORT', '?')}"
        )

    @property
    def mode(self) -> str:
        return self.settings.get("DEPLOY_MODE", "hybrid")

    @property
    def box(self) -> str:
        return self.settings.get("BOX_NAME") or self.name

    def deploy_env_file(self) -> Path:
        """The env file the deploy reads: the member's own, or a private copy naming its box."""
        if self.settings.get("BOX_NAME"):
            return self.env_file
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        WORK_DIR.chmod(0o700)
        copy = WORK_DIR / f"{self.name}.env"
        text = self.env_file.read_text()
        if text and not text.endswith("\n"):
            text += "\n"
        text += f"# added by {PROGRAM}: the name this box's GPU worker reports under\n"
        text += f"BOX_NAME={self.name}\n"
        descriptor = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        copy.chmod(0o600)
        return copy

    def tunnel_environment(self) -> dict[str, str]:
        return {
            key: str(base + self.index)
            for key, base in TUNNEL_PORT_BASES.items()
            if not self.settings.get(key)
        }


def read_fleet(path: Path) -> list[Member]:
    if not path.is_file():
        raise FleetError(f"fleet file {path} does not exist")
    members: list[Member] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) > 2:
            raise FleetError(
                f"{path}:{number}: expected 'NAME ENV_FILE' or 'ENV_FILE', got {line!r}"
            )
        env_file = (path.parent / words[-1]).resolve()
        name = words[0] if len(words) == 2 else env_file.stem.removesuffix(".env") or env_file.name
        if not _NAME.match(name):
            raise FleetError(
                f"{path}:{number}: member name {name!r} must be 1-63 letters, digits, "
                "'.', '_' or '-'"
            )
        if any(member.name == name for member in members):
            raise FleetError(f"{path}:{number}: member {name!r} is listed twice")
        if not env_file.is_file():
            raise FleetError(f"{path}:{number}: env file {env_file} of {name!r} does not exist")
        settings = read_env_file(env_file)
        members.append(Member(name, env_file, len(members), settings))
    if not members:
        raise FleetError(f"{path}: no member listed (one 'NAME ENV_FILE' a line)")
    targets: dict[tuple[str, str, str], str] = {}
    boxes: dict[str, str] = {}
    for member in members:
        target = (
            member.settings.get("VAST_HOST", ""),
            member.settings.get("VAST_PORT", ""),
            member.settings.get("REMOTE_DIR", "/workspace"),
        )
        if target in targets:
            raise FleetError(
                f"{path}: {targets[target]!r} and {member.name!r} deploy to the same place "
                f"({target[0]}:{target[1]} {target[2]})"
            )
        targets[target] = member.name
        if member.box in boxes:
            raise FleetError(
                f"{path}: {boxes[member.box]!r} and {member.name!r} report as the same box "
                f"{member.box!r}: give them different BOX_NAMEs"
            )
        boxes[member.box] = member.name
    return members


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in MEMBER_KEYS}
    env.pop("ENV_FILE", None)
    env.update(extra or {})
    return env


@dataclass
class Outcome:
    member: Member
    rc: int
    seconds: float
    log: Path
    lines: list[str]


def run_member(
    member: Member,
    args: Sequence[str],
    what: str,
    dry_run: bool,
    echo: Callable[[Member, str], None] | None = None,
    extra_env: dict[str, str] | None = None,
    processes: dict[str, subprocess.Popen[str]] | None = None,
) -> Outcome:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    log = WORK_DIR / f"{member.name}.{what}.log"
    command = [sys.executable, "-m", "deploy", *(["--dry-run"] if dry_run else []), "--env-file"]
    command += [str(member.deploy_env_file()), *args]
    started = time.monotonic()
    lines: list[str] = []
    with open(log, "w") as out:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=child_environment(extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the fleet, which stops each by its pid
        )
        if processes is not None:
            processes[member.name] = process
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            out.flush()
            lines.append(line.rstrip("\n"))
            if echo is not None:
                echo(member, line.rstrip("\n"))
        rc = process.wait()
    return Outcome(member, rc, time.monotonic() - started, log, lines)


def in_parallel(members: list[Member], job: Callable[[Member], Outcome]) -> list[Outcome]:
    with ThreadPoolExecutor(max_workers=len(members)) as pool:
        return list(pool.map(job, members))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def last_match(lines: list[str], pattern: str) -> str:
    regex = re.compile(pattern)
    for line in reversed(lines):
        match = regex.search(line)
        if match:
            return match.group(1).strip()
    return ""


def say(message: str) -> None:
    print(f"[fleet] {message}", file=sys.stderr, flush=True)


def report_failures(outcomes: list[Outcome], tail: int = 15) -> None:
    for outcome in outcomes:
        if outcome.rc != 0:
            say(f"{outcome.member.name} failed (exit {outcome.rc}); last lines of {outcome.log}:")
            for line in outcome.lines[-tail:]:
                print(f"    {line}", file=sys.stderr)


def cmd_deploy(members: list[Member], dry_run: bool) -> int:
    started = time.monotonic()
    say(f"deploying {len(members)} member(s) in parallel: {', '.join(m.name for m in members)}")

    def job(member: Member) -> Outcome:
        outcome = run_member(member, ["deploy"], "deploy", dry_run)
        state = "ok" if outcome.rc == 0 else f"FAILED (exit {outcome.rc})"
        say(f"{member.name}: {state} in {outcome.seconds:.0f}s")
        return outcome

    outcomes = in_parallel(members, job)
    rows = []
    for outcome in outcomes:
        member = outcome.member
        done = last_match(outcome.lines, r"^\s*done:\s*(.*)$") or last_match(
            outcome.lines, r"unhealthy: (.*)$"
        )
        rows.append(
            (
                member.name,
                member.box,
                member.where,
                member.mode,
                "ok" if outcome.rc == 0 else "FAILED",
                f"{outcome.seconds:.0f}s",
                done[:60],
            )
        )
    print(table(("MEMBER", "BOX", "SSH", "MODE", "DEPLOY", "TIME", "DONE"), rows))
    report_failures(outcomes)
    failed = sum(outcome.rc != 0 for outcome in outcomes)
    verb = "dry run" if dry_run else "deploy"
    print(
        f"fleet {verb}: {len(outcomes) - failed}/{len(outcomes)} ok in "
        f"{time.monotonic() - started:.0f}s; logs in {WORK_DIR}"
    )
    hybrid = [m for m in members if m.mode == "hybrid"]
    if hybrid and not dry_run:
        print(
            f"hybrid members reach Temporal and S3 through their tunnels: "
            f"{PROGRAM} tunnel FLEETFILE (keeps them all open)"
        )
    return 1 if failed else 0


def cmd_status(members: list[Member], dry_run: bool) -> int:
    outcomes = in_parallel(members, lambda m: run_member(m, ["status"], "status", dry_run))
    rows = []
    for outcome in outcomes:
        member = outcome.member
        print(f"=== {member.name} ({member.where})")
        for line in outcome.lines:
            print(f"  {line}")
        health = last_match(outcome.lines, r"^health: (\S+)") or "unreachable"
        gpu = last_match(outcome.lines, r"^\s*worker-gpu\s+(\S+)") or "?"
        llama = last_match(outcome.lines, r"^\s*llama\s+(\S+)") or "?"
        rows.append((member.name, member.box, member.where, health, llama, gpu))
    print(table(("MEMBER", "BOX", "SSH", "HEALTH", "LLAMA", "WORKER-GPU"), rows))
    return 1 if any(outcome.rc != 0 for outcome in outcomes) else 0


def prefixed_echo() -> Callable[[Member, str], None]:
    lock = threading.Lock()

    def echo(member: Member, line: str) -> None:
        with lock:
            print(f"{member.name} | {line}", flush=True)

    return echo


def run_streaming(
    members: list[Member], args: list[str], what: str, dry_run: bool, extra_env: bool = False
) -> int:
    """Runs a long-lived command (logs -f, tunnel) on every member, prefixing their lines;
    Ctrl-C or SIGTERM stops every one of them by its pid."""
    echo = prefixed_echo()
    processes: dict[str, subprocess.Popen[str]] = {}

    def job(member: Member) -> Outcome:
        env = member.tunnel_environment() if extra_env else None
        return run_member(member, args, what, dry_run, echo, env, processes)

    def stop_all(*_: object) -> None:
        for process in list(processes.values()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    pool = ThreadPoolExecutor(max_workers=len(members))
    futures = [pool.submit(job, member) for member in members]
    try:
        outcomes = [future.result() for future in futures]
    except KeyboardInterrupt:
        stop_all()
        outcomes = [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True)
    failed = [o for o in outcomes if o.rc not in (0, -signal.SIGTERM, 128 + signal.SIGTERM)]
    for outcome in failed:
        say(f"{outcome.member.name}: {what} ended with exit {outcome.rc} (see {outcome.log})")
    return 1 if failed else 0


def cmd_logs(members: list[Member], args: list[str], dry_run: bool) -> int:
    return run_streaming(members, ["logs", *args], "logs", dry_run)


def cmd_tunnel(members: list[Member], dry_run: bool) -> int:
    rows = []
    for member in members:
        ports = {
            **{k: member.settings.get(k, "") for k in TUNNEL_PORT_BASES},
            **member.tunnel_environment(),
        }
        rows.append(
            (
                member.name,
                member.where,
                f"http://127.0.0.1:{ports['TUNNEL_API_PORT']}/docs",
                f"http://127.0.0.1:{ports['TUNNEL_WEB_PORT']}/",
            )
        )
    print(table(("MEMBER", "SSH", "API", "DASHBOARD"), rows), flush=True)
    say("tunnels open until Ctrl-C")
    return run_streaming(members, ["tunnel"], "tunnel", dry_run, extra_env=True)


def cmd_stop(members: list[Member], dry_run: bool) -> int:
    outcomes = in_parallel(members, lambda m: run_member(m, ["stop"], "stop", dry_run))
    rows = [
        (o.member.name, o.member.where, "stopped" if o.rc == 0 else f"FAILED (exit {o.rc})")
        for o in outcomes
    ]
    print(table(("MEMBER", "SSH", "STOP"), rows))
    report_failures(outcomes)
    return 1 if any(o.rc != 0 for o in outcomes) else 0


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Deploy to, watch and stop several instances at once. The fleet file "
        "lists one member a line: 'NAME ENV_FILE' (or only ENV_FILE).",
    )
    parser.add_argument("--dry-run", action="store_true", help="passed to every deploy")
    parser.add_argument("command", choices=("deploy", "status", "logs", "stop", "tunnel"))
    parser.add_argument("fleet_file", type=Path, metavar="FLEETFILE")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options, rest = parse(sys.argv[1:] if argv is None else argv)
    if rest and options.command != "logs":
        say(f"{options.command} takes no further arguments (got: {' '.join(rest)})")
        return 2
    try:
        members = read_fleet(options.fleet_file.resolve())
    except (FleetError, OSError) as exc:
        say(f"error: {exc}")
        return 2
    if options.command == "deploy":
        return cmd_deploy(members, options.dry_run)
    if options.command == "status":
        return cmd_status(members, options.dry_run)
    if options.command == "logs":
        return cmd_logs(members, rest, options.dry_run)
    if options.command == "stop":
        return cmd_stop(members, options.dry_run)
    return cmd_tunnel(members, options.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
