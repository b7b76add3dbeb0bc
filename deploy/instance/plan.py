"""Which supervisord programs a deploy restarts for the files it changed.

The rules follow the package boundaries: a program is restarted when a file it imports or
runs changed. `kernel/` is imported by every Python program, `app/` only by the API (and the
dashboard, which is `app.web`, for `app/core/` and the package itself), `workers/` only by
the two workers. Standard library only (see `deploy/instance/__init__.py`).

    python -m deploy.instance.plan STATE [PATH...]   prints the plan (STATE: running | ...)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

RESTART_STACK = "@all"  # every program reads .env at start: stop and start the stack
APPLY_CONF = "@update"  # supervisorctl update (through the launcher)

# Every program, in the order plans name them.
PROGRAMS = (
    "fastapi",
    "web",
    "worker-cpu",
    "worker-gpu",
    "autostop",
    "llama",
    "temporal",
    "minio",
)
PYTHON_PROGRAMS = ("fastapi", "web", "worker-cpu", "worker-gpu", "autostop")
SERVERS = ("temporal", "minio", "llama")  # started by scripts/run_program.sh

# (path, or folder ending in "/"; what a change there restarts). The first match wins;
# a path no rule matches (docs, tests, the deploy's own scripts) restarts nothing.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (".env", (RESTART_STACK,)),
    ("supervisord.conf", (APPLY_CONF,)),
    ("kernel/", PYTHON_PROGRAMS),
    ("app/web/", ("web",)),
    ("app/core/", ("fastapi", "web")),
    ("app/__init__.py", ("fastapi", "web")),
    ("app/", ("fastapi",)),
    ("workers/autostop.py", ("autostop",)),
    ("workers/", ("worker-cpu", "worker-gpu")),
    ("scripts/run_program.sh", SERVERS),
    ("scripts/lib/", SERVERS),
)

Mode = Literal["start", "restart-all", "converge"]


def programs_for_path(path: str) -> tuple[str, ...]:
    """What a change to `path` (relative to the repository) restarts."""
    path = path.removeprefix("./")
    for rule, programs in RULES:
        if path == rule or (rule.endswith("/") and (path.startswith(rule) or path == rule[:-1])):
            return programs
    return ()


@dataclass(frozen=True)
class Plan:
    mode: Mode
    update: bool = False  # converge: apply supervisord.conf first
    restart: tuple[str, ...] = ()  # converge: restarted where running

    @property
    def text(self) -> str:
        if self.mode == "start":
            return "start the stack (scripts/start_services.sh)"
        if self.mode == "restart-all":
            return (
                "restart the stack, .env changed "
                "(scripts/stop_services.sh, scripts/start_services.sh)"
            )
        text = ""
        if self.update:
            text += "apply supervisord.conf (supervisorctl update); "
        if self.restart:
            text += f"restart {' '.join(self.restart)} where running; "
        return text + "start autostart programs that are down"


def plan_actions(supervisord_running: bool, paths: Iterable[str]) -> Plan:
    """What to do, given whether supervisord runs and the paths changed since the last deploy."""
    words = {word for path in paths for word in programs_for_path(path)}
    if not supervisord_running:
        return Plan("start")
    if RESTART_STACK in words:
        return Plan("restart-all")
    return Plan(
        "converge",
        update=APPLY_CONF in words,
        restart=tuple(program for program in PROGRAMS if program in words),
    )


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: plan.py STATE [PATH...]", file=sys.stderr)
        return 2
    print(plan_actions(argv[0] == "running", argv[1:]).text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
