"""A worker's stop signals (workers/stop.py): caught from the first line, never lost, never
left to the default action (death by SIGTERM, exit 143), whether they come before the
event loop, while it runs, from another thread, or after it closed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from harness.stack import REPO_ROOT
from workers.stop import STOP_SIGNALS, StopBeforeStart, StopSignals


@pytest.fixture
def restore_signals() -> Iterator[None]:
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    try:
        yield
    finally:
        signal.set_wakeup_fd(wakeup)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_a_signal_before_the_loop_stops_it_at_once(restore_signals: None) -> None:
    stop = StopSignals.install()
    stop.started()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.arrived()
    assert asyncio.run(asyncio.wait_for(stop.wait(), 5)) is signal.SIGTERM


def test_a_signal_while_the_loop_waits_wakes_it(restore_signals: None) -> None:
    stop = StopSignals.install()
    stop.started()

    async def scenario() -> signal.Signals:
        waiting = asyncio.create_task(stop.wait())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        # From another thread, as when the SDK's native threads get the signal: the
        # wakeup pipe, not the main thread's next bytecode, wakes the loop.
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        return await asyncio.wait_for(waiting, 5)

    assert asyncio.run(scenario()) is signal.SIGINT


def test_the_first_signal_counts_and_later_ones_change_nothing(restore_signals: None) -> None:
    stop = StopSignals.install()
    stop.started()
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    assert asyncio.run(asyncio.wait_for(stop.wait(), 5)) is signal.SIGINT
    # After the loop closed the handler is still ours: no default action, no exit.
    os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == stop._on_signal
    assert stop.received is signal.SIGINT


def test_nothing_arrived_means_no_stop(restore_signals: None) -> None:
    stop = StopSignals.install()
    stop.started()

    async def scenario() -> bool:
        waiting = asyncio.create_task(stop.wait())
        await asyncio.sleep(0.2)
        done = waiting.done()
        waiting.cancel()
        return done

    assert not stop.arrived()
    assert asyncio.run(scenario()) is False


def test_a_signal_while_starting_abandons_start_up(restore_signals: None) -> None:
    stop = StopSignals.install()
    with pytest.raises(StopBeforeStart):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # stands for a slow import: interrupted at once
    assert stop.received is signal.SIGTERM
    # Only once: what comes after start-up is recorded, not raised.
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.arrived()


def test_the_entry_point_exits_0_on_sigterm_before_it_connects() -> None:
    """`python -m workers` SIGTERMed while it waits for a Temporal that does not answer:
    a stop, exit 0, within seconds (it used to die of the signal: exit -15)."""
    env = {k: v for k, v in os.environ.items() if k != "ENV_FILE"}
    env.update(
        ENV_FILE=os.devnull,
        DEPLOY_MODE="local",
        TEMPORAL_ADDRESS="127.0.0.1:9",  # discard: nothing answers
        LOG_LEVEL="INFO",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--queue", "cpu"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_caught(worker.pid, signal.SIGTERM, timeout=30)
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    assert "while starting" in output or "while connecting" in output, output
    assert "Traceback" not in output and "Fatal Python error" not in output, output


def caught_signals(pid: int) -> int:
    """The mask of signals the process has handlers for (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    return 0


def wait_until_caught(pid: int, sig: signal.Signals, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not caught_signals(pid) & (1 << (sig - 1)):
        assert time.monotonic() < deadline, f"{sig.name} not caught after {timeout}s"
        time.sleep(0.01)
