"""The stack's logs cannot fill a box by themselves: supervisord rotates its own log and every
program's, by size, keeping a bounded number of old files (docs/operations-logs.md)."""

from __future__ import annotations

import configparser
from pathlib import Path

from workers.runner import GRACEFUL_SHUTDOWN

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
# The sum documented in docs/operations-logs.md.
DOCUMENTED_TOTAL_MB = 595


def conf() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "supervisord.conf")
    return parser


def size(value: str) -> int:
    assert value.endswith("MB"), value
    return int(value[:-2]) * MB


def test_every_log_is_rotated_by_size_and_the_total_is_bounded() -> None:
    parser = conf()
    main = parser["supervisord"]
    total = size(main["logfile_maxbytes"]) * (1 + int(main["logfile_backups"]))
    programs = [s for s in parser.sections() if s.startswith("program:")]
    assert programs
    for section in programs:
        program = parser[section]
        # stderr goes to the same rotated file: no second, unbounded one.
        assert program.get("redirect_stderr") == "true", section
        maxbytes = size(program["stdout_logfile_maxbytes"])
        backups = int(program["stdout_logfile_backups"])
        assert 0 < maxbytes <= 50 * MB and 1 <= backups <= 5, section
        total += maxbytes * (1 + backups)
    assert total == DOCUMENTED_TOTAL_MB * MB


def test_workers_stop_on_sigterm_as_an_expected_exit() -> None:
    """What workers/__main__.py does on SIGTERM (exit 0) is what supervisord expects."""
    for name in ("worker-cpu", "worker-gpu"):
        program = conf()[f"program:{name}"]
        assert program["stopsignal"] == "TERM"
        assert program["exitcodes"] == "0" and program["autorestart"] == "unexpected"
        # The worker's graceful shutdown fits in stopwaitsecs, before SIGKILL.
        assert int(program["stopwaitsecs"]) > GRACEFUL_SHUTDOWN.total_seconds()
