"""`./deploy_vast.sh [--dry-run] [--env-file FILE] [COMMAND [ARGS]]`: the command parser.

Global flags come before the command (or anywhere before `ssh`'s remote command); what
follows the command is its own, parsed by the argparse parser its registration describes.
A command is one function and one `@command(...)` registration (see deploy/commands.py):

    @command("up", "rent an instance and deploy to it", arguments=add_up_arguments)
    def up(ctx: Context, args: argparse.Namespace) -> int: ...

Errors are one line, `[deploy] error: REASON`, and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.console import PROGRAM_NAME, DeployError
from deploy.lock import RemoteLock
from deploy.remote import Remote
from deploy.settings import SETTINGS_HELP, DeploySettings, env_file_path, load

Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass
class Context:
    """What every command gets: the flags, the settings (for commands that need them) and
    the one Remote and lock of this run, cleaned up by main() however the command ends."""

    dry_run: bool
    env_file: Path
    env_file_given: bool
    started: float = field(default_factory=time.monotonic)
    _settings: DeploySettings | None = None
    _remote: Remote | None = None
    _lock: RemoteLock | None = None

    @property
    def settings(self) -> DeploySettings:
        if self._settings is None:
            self._settings = load(self.env_file, self.env_file_given)
        return self._settings

    @property
    def remote(self) -> Remote:
        if self._remote is None:
            self._remote = Remote(self.settings, dry_run=self.dry_run)
        return self._remote

    @property
    def lock(self) -> RemoteLock:
        if self._lock is None:
            self._lock = RemoteLock(self.remote)
        return self._lock

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.1f}s"

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
        if self._remote is not None:
            self._remote.close()


Run = Callable[[Context, argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    run: Run
    usage: str  # the command and its arguments, as --help shows them
    help: str  # one or more lines for --help
    arguments: Arguments | None = None
    settings: bool = True  # needs valid settings (loaded before it runs)
    rest: bool = False  # takes every later word verbatim (ssh's remote command, fleet)


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    help: str,
    *,
    usage: str = "",
    arguments: Arguments | None = None,
    settings: bool = True,
    rest: bool = False,
) -> Callable[[Run], Run]:
    """Registers a subcommand: its function gets the Context and its parsed arguments (in
    `args.rest` for a `rest` command) and returns the exit status."""

    def register(run: Run) -> Run:
        COMMANDS[name] = Command(name, run, usage or name, help, arguments, settings, rest)
        return run

    return register


class _Parser(argparse.ArgumentParser):
    """argparse that raises DeployError instead of printing usage and exiting 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise DeployError(f"{self.prog}: {message}")


def parse_command_args(spec: Command, words: list[str]) -> argparse.Namespace:
    if spec.rest:
        return argparse.Namespace(rest=list(words))
    parser = _Parser(prog=spec.name, add_help=False)
    if spec.arguments is not None:
        spec.arguments(parser)
    args, unknown = parser.parse_known_args(words)
    if unknown:
        flag = next((word for word in unknown if word.startswith("-")), None)
        if flag is not None:
            raise DeployError(f"{spec.name}: unknown flag '{flag}'; see {PROGRAM_NAME} --help")
        if spec.arguments is None:
            raise DeployError(f"{spec.name} takes no arguments (got: {' '.join(unknown)})")
        raise DeployError(f"{spec.name}: unexpected argument(s): {' '.join(unknown)}")
    return args


@dataclass
class Invocation:
    dry_run: bool = False
    env_file: str | None = None
    help: bool = False
    command: str = "deploy"
    args: list[str] = field(default_factory=list)


def split_argv(argv: Sequence[str]) -> Invocation:
    """Global flags, the command and its words. Flags after a command are that command's
    (`logs -f`), except the global ones; after `ssh` or `fleet` every word is theirs."""
    found = Invocation()
    named: str | None = None
    words = list(argv)
    while words:
        word = words.pop(0)
        spec = COMMANDS.get(named or "")
        if spec is not None and spec.rest:
            found.args.append(word)
            found.args.extend(words)
            break
        if word == "--dry-run":
            found.dry_run = True
        elif word == "--env-file":
            if not words or not words[0]:
                raise DeployError("--env-file needs a file")
            found.env_file = words.pop(0)
        elif word in ("-h", "--help"):
            found.help = True
            break
        elif word == "--":
            found.args.extend(words)
            break
        elif word.startswith("-"):
            if named is None:
                raise DeployError(f"unknown flag '{word}'; see {PROGRAM_NAME} --help")
            found.args.append(word)
        elif named is None:
            named = word
        else:
            found.args.append(word)
    found.command = named or "deploy"
    return found


def usage() -> str:
    lines = [
        f"Usage: {PROGRAM_NAME} [--dry-run] [--env-file FILE] [COMMAND [ARGS]]",
        "",
        "Commands:",
    ]
    for spec in COMMANDS.values():
        help_lines = spec.help.split("\n")
        if len(spec.usage) <= 19:
            lines.append(f"  {spec.usage:<19}  {help_lines[0]}")
        else:
            lines.append(f"  {spec.usage}")
            lines.append(f"  {'':<19}  {help_lines[0]}")
        lines += [f"  {'':<19}  {line}" for line in help_lines[1:]]
    return "\n".join(lines) + "\n" + SETTINGS_HELP


def main(argv: Sequence[str] | None = None) -> int:
    import deploy.commands  # noqa: F401  (registers the commands)

    ctx: Context | None = None
    try:
        invocation = split_argv(sys.argv[1:] if argv is None else argv)
        if invocation.help:
            sys.stdout.write(usage())
            return 0
        spec = COMMANDS.get(invocation.command)
        if spec is None:
            raise DeployError(f"unknown command '{invocation.command}'; see {PROGRAM_NAME} --help")
        ctx = Context(
            invocation.dry_run,
            env_file_path(invocation.env_file),
            invocation.env_file is not None,
        )
        args = parse_command_args(spec, invocation.args)
        if spec.settings:
            _ = ctx.settings  # every setting checked before anything reaches the instance
        return spec.run(ctx, args)
    except DeployError as exc:
        print(f"[deploy] error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("[deploy] error: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if ctx is not None:
            ctx.close()
