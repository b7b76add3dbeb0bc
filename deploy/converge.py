"""Converge and the health gate: bring the instance to the synced code, then wait for
/health.

On the instance, `python -m deploy.instance.converge` starts the stack, or restarts what
changed since the last deploy (fingerprints in .deploy/manifest.json, so an interrupted
deploy is finished by the next one), records the new fingerprints and runs the health gate
(`deploy.instance.health`). Its lines come back prefixed `[deploy]   `; `done: ...` says what
it did, `error: ...` and `unhealthy: ...` why it stopped.

A dry run plans instead, on the instance, with this checkout's `plan.py` and `manifest.py`
fed on stdin (the code there may be older): `plan: TEXT`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from deploy.console import PROGRAM_NAME, DeployError, log
from deploy.preflight import INSTANCE_CODE
from deploy.remote import SSH_LOST, Remote, assign, shipped_python

CONVERGE = """cd -- "$REMOTE_DIR"
exec "${INSTANCE_VENV}/bin/python" -m deploy.instance.converge --health-timeout "$health_timeout"
"""

PLAN = """state=absent
pending=()
if [[ -f "${REMOTE_DIR}/scripts/lib/common.sh" ]]; then
  in_project >/dev/null
  state=stopped
  if supervisord_running; then state=running; fi
  mapfile -t pending < <(pending_paths)
  if [[ "${pending[0]:-}" == "@unknown" ]]; then pending=(.env); fi
fi
echo "plan: $(plan "$state" "${pending[@]}" "${local_paths[@]}")"
"""


def converge_script(health_timeout: int) -> str:
    # converge.py validates the settings itself (kernel.config): no load_settings here.
    return assign(health_timeout=health_timeout) + CONVERGE


def dry_run_plan_script(paths: list[str]) -> str:
    """What the deploy would do, planned on the instance from supervisord's state, the
    changes the last deploy left unapplied and those this run would make."""
    words = "".join(f" {shlex.quote(path)}" for path in paths)
    return (
        f"local_paths=({words} )\n"
        "pending_paths() {\n"
        + shipped_python(
            INSTANCE_CODE / "manifest.py",
            '"${REMOTE_DIR}/.deploy/manifest.json" --root "$REMOTE_DIR"',
        )
        + "}\nplan() {\n"
        + shipped_python(INSTANCE_CODE / "plan.py", '"$@"')
        + "}\n"
        + PLAN
    )


@dataclass
class Outcome:
    """What the instance's converge printed: its `done:`, `error:` and `unhealthy:` lines."""

    done: str = ""
    errors: list[str] = field(default_factory=list)
    unhealthy: list[str] = field(default_factory=list)

    def read(self, line: str) -> None:
        for prefix, into in (("error: ", self.errors), ("unhealthy: ", self.unhealthy)):
            if line.startswith(prefix):
                into.append(line.removeprefix(prefix))
        if line.startswith("done: "):
            self.done = line.removeprefix("done: ")


def failure(rc: int, outcome: Outcome, where: str) -> str:
    """The one line a failed converge ends with."""
    if rc == SSH_LOST:
        return f"lost the SSH connection to {where} while starting the services"
    if outcome.errors:
        return outcome.errors[-1]
    if outcome.unhealthy:
        return (
            f"the services on {where} are not healthy ({outcome.unhealthy[-1]}); fix and run "
            f"{PROGRAM_NAME} again, or inspect with: {PROGRAM_NAME} logs PROGRAM"
        )
    return f"starting the services on {where} failed (exit {rc}, see above)"


def converge(remote: Remote, changed: list[str]) -> str:
    """Runs (or, in a dry run, plans) the converge; returns what was done."""
    settings = remote.settings
    timeout = settings.stack.HEALTH_TIMEOUT
    script = converge_script(timeout)
    if remote.dry_run:
        rc, output = remote.probe("plan", dry_run_plan_script(changed))
        if rc != 0:
            raise DeployError(f"could not read the state of {settings.where}:{settings.remote_dir}")
        lines = output.splitlines()
        plans = [line.removeprefix("plan: ") for line in lines if line.startswith("plan: ")]
        if not plans or not plans[-1]:
            last = lines[-1] if lines else ""
            raise DeployError(f"could not plan the deploy on {settings.where}: {last}")
        log(f"start: would {plans[-1]}")
        remote.run(f"converge, then wait up to {timeout}s for /health", script)
        return f"would {plans[-1]}"
    log(
        "start: restart what changed since the last deploy, then wait up to "
        f"{timeout}s for {settings.stack.api_url}/health"
    )
    outcome = Outcome()

    def on_line(line: str) -> None:
        log(f"  {line}")
        outcome.read(line)

    rc = remote.run("converge", script, on_line)
    if rc != 0:
        raise DeployError(failure(rc, outcome, settings.where))
    return outcome.done
