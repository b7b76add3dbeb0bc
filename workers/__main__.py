"""Worker entry point: `python -m workers --queue cpu|gpu` (see workers/runner.py).

SIGTERM and SIGINT are caught before anything else happens: importing the Temporal SDK and
connecting take seconds, and supervisord may stop a worker at any moment of them. A stop is
never a crash: the worker exits 0 whenever the signal comes.
"""

from __future__ import annotations

import sys

from workers.stop import StopBeforeStart, StopSignals


def main(argv: list[str] | None = None) -> int:
    stop = StopSignals.install()
    try:
        import argparse

        parser = argparse.ArgumentParser(description="Run a Temporal worker for one task queue.")
        parser.add_argument("--queue", choices=("cpu", "gpu"), required=True)
        args = parser.parse_args(argv)
        # Imported only now, with the signals caught: it loads the Temporal SDK.
        from workers.runner import run_worker

        return run_worker(args.queue, stop)
    except StopBeforeStart as signal_name:
        print(f"{signal_name} while starting: exiting before connecting", file=sys.stderr)
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
