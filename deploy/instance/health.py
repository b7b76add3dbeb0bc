"""The API's /health as seen on the instance, and what supervisord says about each program.

    python -m deploy.instance.health gate SECONDS   waits until /health reports ok; stops early
                                                     when an autostart program turns FATAL or
                                                     keeps exiting; then prints the log tails
    python -m deploy.instance.health status         supervisord's programs and /health once

Exit status 0 when healthy, 1 otherwise. Lines starting "unhealthy: " tell the deploy why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.config import Settings, SettingsError, load_settings
from kernel.supervisor import ProgramInfo, SupervisorControl, SupervisorUnavailable

# /health checks whose failure a program's log explains.
PROGRAM_OF_CHECK = {"temporal": "temporal", "s3": "minio", "llama": "llama"}
LOG_TAIL_LINES = 30


def health_url(settings: Settings) -> str:
    return f"{settings.api_url}/health"


def api_key(settings: Settings) -> str | None:
    return settings.API_KEY.get_secret_value() if settings.API_KEY else None


def fetch(url: str, api_key: str | None = None) -> dict[str, Any] | None:
    """The /health report, or None when the API does not answer with JSON. Its checks
    come only with the key, when one is set."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            report = json.load(response)
    except urllib.error.HTTPError as error:
        try:
            report = json.load(error)
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


@dataclass
class Assessment:
    problems: dict[str, str] = field(default_factory=dict)  # check or program -> message
    warnings: list[str] = field(default_factory=list)
    programs: set[str] = field(default_factory=set)  # whose logs explain the problems


def assess(report: dict[str, Any] | None, settings: Settings, url: str) -> Assessment:
    result = Assessment()
    if report is None:
        result.problems["fastapi"] = f"the API does not answer at {url}"
        result.programs.add("fastapi")
        return result
    # In hybrid mode Temporal and S3 live elsewhere: unreachable is a warning, not a failure.
    external = {"temporal", "s3"} if settings.DEPLOY_MODE == "hybrid" else set()
    for name, check in sorted((report.get("checks") or {}).items()):
        if not isinstance(check, dict) or check.get("status") == "ok":
            continue
        message = check.get("message", "error")
        if name == "supervisor":
            for program, entry in sorted((check.get("programs") or {}).items()):
                if entry.get("status") != "ok":
                    result.problems[program] = f"{entry.get('state')}: {entry.get('message', '')}"
                    result.programs.add(program)
        elif name in external:
            result.warnings.append(
                f"{name} is not reachable from the instance ({message}); "
                "if it runs on your machine, start ./deploy_vast.sh tunnel"
            )
        else:
            result.problems[name] = message
            if name in PROGRAM_OF_CHECK:
                result.programs.add(PROGRAM_OF_CHECK[name])
    return result


def program_states(control: SupervisorControl) -> dict[str, ProgramInfo]:
    try:
        return control.programs_sync()
    except (SupervisorUnavailable, OSError):
        return {}


def print_tail(log_dir: Path, program: str, lines: int = LOG_TAIL_LINES) -> None:
    path = log_dir / f"{program}.log"
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        text = [f"(no log at {path})"]
    print(f"--- last {len(text)} lines of {path}")
    print("\n".join(text))


def report_once(settings: Settings) -> int:
    url = health_url(settings)
    report = fetch(url, api_key(settings))
    result = assess(report, settings, url)
    print(f"health: {'not answering' if report is None else report.get('status')} ({url})")
    for name, check in sorted(((report or {}).get("checks") or {}).items()):
        if not isinstance(check, dict):
            continue
        detail = next(
            (check[key] for key in ("message", "address", "endpoint", "url") if check.get(key)),
            "",
        )
        print(f"  {name:<11} {check.get('status')!s:<6} {detail}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    return 0 if report is not None and not result.problems else 1


def status(settings: Settings) -> int:
    """supervisord's programs, then /health once."""
    control = SupervisorControl(settings.supervisor_socket, timeout=15)
    try:
        programs = control.programs_sync()
    except (SupervisorUnavailable, OSError):
        print("supervisord: not running")
        return 1
    pid_file = settings.data_dir / "supervisord.pid"
    pid = pid_file.read_text().strip() if pid_file.is_file() else "?"
    print(f"supervisord: running (pid {pid})")
    for name, info in sorted(programs.items()):
        print(f"  {name:<12} {info.state:<9} {info.description}")
    return report_once(settings)


def gate(settings: Settings, timeout: float) -> int:
    """Waits for /health to be ok; prints why not, and the log tails, when it gives up."""
    url = health_url(settings)
    control = SupervisorControl(settings.supervisor_socket, timeout=15)
    autostart = {name for name, enabled in settings.autostart_programs.items() if enabled}
    started = time.monotonic()
    deadline = started + timeout
    shown = None
    pids: dict[str, list[int]] = {}  # program -> distinct pids seen: a crash loop shows new ones
    while True:
        result = assess(fetch(url, api_key(settings)), settings, url)
        if not result.problems:
            for warning in result.warnings:
                print(f"warning: {warning}")
            print(f"healthy after {time.monotonic() - started:.1f}s", flush=True)
            return 0
        states = program_states(control)
        for program, info in states.items():
            seen = pids.setdefault(program, [])
            if info.pid and (not seen or seen[-1] != info.pid):
                seen.append(info.pid)
        fatal = sorted(p for p in autostart if p in states and states[p].state == "FATAL")
        crashing = sorted(p for p in autostart if len(pids.get(p, [])) > 3)
        if fatal or crashing or time.monotonic() >= deadline:
            break
        summary = ", ".join(sorted(result.problems))
        if summary != shown:
            print(f"waiting for: {summary}", flush=True)
            shown = summary
        time.sleep(1)

    if fatal:
        why = f"{', '.join(fatal)} failed to start (FATAL)"
    elif crashing:
        why = f"{', '.join(crashing)} keeps exiting (restarted {len(pids[crashing[0]]) - 1} times)"
    else:
        why = f"not healthy after {timeout:g}s"
    print(f"unhealthy: {why}")
    for name, message in sorted(result.problems.items()):
        print(f"  {name}: {message}")
    for program in sorted(result.programs | set(fatal) | set(crashing)):
        print_tail(settings.data_dir / "logs", program)
    sys.stdout.flush()
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The stack's health, seen on the instance.")
    commands = parser.add_subparsers(dest="command", required=True)
    wait = commands.add_parser("gate", help="wait until /health reports ok")
    wait.add_argument("seconds", type=float)
    commands.add_parser("status", help="supervisord's programs and /health once")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: invalid setting {exc}", file=sys.stderr)
        return 2
    if args.command == "gate":
        return gate(settings, args.seconds)
    return status(settings)


if __name__ == "__main__":
    raise SystemExit(main())
