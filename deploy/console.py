"""What the deploy prints: `[deploy] ...` lines on stderr, results on stdout.

`DeployError` carries the one-line reason a command stops; `deploy.cli` prints it as
`[deploy] error: REASON` and exits 1, like every message the README documents.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

PROGRAM_NAME = "./deploy_vast.sh"


class DeployError(Exception):
    """Stops the command; the message is the one line the user reads."""


def log(message: str) -> None:
    print(f"[deploy] {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"[deploy] warning: {message}", file=sys.stderr, flush=True)


def out(message: str) -> None:
    print(message, flush=True)


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.split("\n"))


def sq(word: str) -> str:
    """`word` in single quotes for a POSIX shell, always (the form the README shows)."""
    return "'" + word.replace("'", "'\\''") + "'"


def tracing() -> bool:
    """DEPLOY_TRACE=1: every local command is printed before it runs (`+ ARGV`). What goes
    to a command's standard input (scripts, the env file) is never printed."""
    return os.environ.get("DEPLOY_TRACE") == "1"


def trace(argv: Sequence[str]) -> None:
    if tracing():
        print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
