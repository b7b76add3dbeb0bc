"""Brings the instance to the synced code, then waits for /health (run by each deploy).

Starts the stack when supervisord is not running; otherwise restarts what changed since the
last successful deploy (`deploy.instance.manifest`, planned by `deploy.instance.plan`) and
starts the programs the mode starts by itself that are down. The new fingerprints are recorded
only after that, so an interrupted deploy is finished by the next one.

    cd REMOTE_DIR && "$INSTANCE_VENV/bin/python" -m deploy.instance.converge [--health-timeout S]

Prints "plan: ...", one line per action, "done: ..." and the health gate's lines; a line
"error: ..." is the reason it stopped. Exit status 0 when healthy.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

from deploy.instance import health, manifest, plan
from kernel.config import PROJECT_ROOT, Settings, SettingsError, load_settings
from kernel.supervisor import SupervisorControl, SupervisorUnavailable

MANIFEST = PROJECT_ROOT / ".deploy" / "manifest.json"
RESTARTABLE_STATES = frozenset({"RUNNING", "STARTING", "BACKOFF"})
DOWN_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})
PORT_TAKEN = 4


def say(line: str) -> None:
    print(line, flush=True)


def supervisord_running(control: SupervisorControl) -> bool:
    try:
        control.programs_sync()
    except (SupervisorUnavailable, OSError):
        return False
    return True


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def launcher(name: str) -> None:
    """Runs scripts/start_services.sh or stop_services.sh; its output goes to the deploy."""
    subprocess.run(
        ["bash", str(PROJECT_ROOT / "scripts" / name)],
        stdin=subprocess.DEVNULL,
        check=True,
        cwd=PROJECT_ROOT,
    )


def converge(settings: Settings, control: SupervisorControl, steps: plan.Plan) -> list[str]:
    """Carries out the plan; returns what was done."""
    done: list[str] = []
    if steps.mode == "start":
        if port_taken(settings.API_PORT):
            say(
                f"error: port {settings.API_PORT} (API_PORT) is already taken on the instance by"
                " a process this supervisord does not run (another copy of the stack, e.g. the"
                " image's own under /opt/app?); stop it first"
            )
            raise SystemExit(PORT_TAKEN)
        launcher("start_services.sh")
        return ["started the stack"]
    if steps.mode == "restart-all":
        launcher("stop_services.sh")
        launcher("start_services.sh")
        return ["restarted the stack (.env changed)"]
    if steps.update:
        launcher("start_services.sh")
        done.append("applied supervisord.conf")
    states = health.program_states(control)
    for program in steps.restart:
        if program in states and states[program].state in RESTARTABLE_STATES:
            say(f"restarting {program}")
            try:
                control.restart_sync(program)
            except (xmlrpc.client.Fault, SupervisorUnavailable, OSError) as exc:
                say(f"{program} did not restart cleanly ({exc})")
            done.append(f"restarted {program}")
    for program in plan.PROGRAMS:
        if not settings.autostart_programs.get(program) or program not in states:
            continue
        if states[program].state in DOWN_STATES:
            say(f"starting {program} (it was {states[program].state})")
            try:
                control.start_sync(program)
            except (xmlrpc.client.Fault, SupervisorUnavailable, OSError) as exc:
                say(f"{program} did not start cleanly ({exc})")
            done.append(f"started {program}")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bring the instance to the synced code.")
    parser.add_argument(
        "--health-timeout", type=float, help="seconds to wait for /health (HEALTH_TIMEOUT)"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        say(f"error: invalid setting {exc}")
        return 2
    control = SupervisorControl(settings.supervisor_socket, timeout=15)
    root = Path(PROJECT_ROOT)
    changed = manifest.changed(manifest.load(MANIFEST), manifest.fingerprints(root))
    # Without a record of the last deploy, everything may have changed: as for a new .env.
    paths = [".env"] if changed is None else changed
    steps = plan.plan_actions(supervisord_running(control), paths)
    say(f"plan: {steps.text}")
    try:
        done = converge(settings, control, steps)
    except subprocess.CalledProcessError as exc:
        say(f"error: {Path(exc.cmd[-1]).name} failed (exit {exc.returncode}, see above)")
        return 1
    manifest.save(MANIFEST, manifest.fingerprints(root))
    say(f"done: {', '.join(done) or 'nothing changed'}")
    timeout = args.health_timeout if args.health_timeout is not None else settings.HEALTH_TIMEOUT
    return health.gate(settings, timeout)


if __name__ == "__main__":
    sys.exit(main())
