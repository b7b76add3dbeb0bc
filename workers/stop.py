"""SIGTERM and SIGINT for a worker, from its first line to its last.

supervisord stops a worker with SIGTERM at any moment: while Python imports the Temporal
SDK, while the worker connects, while it polls, while it shuts down. The default action
(death by the signal, exit status 143) would make supervisord count a stop as a crash, so
the handler is installed before anything slow happens and is never uninstalled. asyncio's
own `loop.add_signal_handler` is not used: closing the loop puts the default action back,
which reopens the window while the process finishes.

The C-level handler writes the signal's number to a pipe (`signal.set_wakeup_fd`), so a
signal delivered to one of the SDK's native threads still wakes the event loop, and one
that arrived before the loop existed is waiting there when the loop starts reading.
Standard library only, and asyncio only once the loop runs: installing must come first.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopBeforeStart(BaseException):
    """Raised by the handler while the worker is still starting: nothing has started that
    needs shutting down, so importing and reading settings are abandoned at once. A
    BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""


class StopSignals:
    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        # Until started(): a stop abandons start-up (imports, settings) at once.
        self._starting = True
        self._reader, self._writer = os.pipe()
        os.set_blocking(self._reader, False)
        os.set_blocking(self._writer, False)

    @classmethod
    def install(cls) -> StopSignals:
        """Catches SIGTERM and SIGINT from now on (main thread only)."""
        stop = cls()
        signal.set_wakeup_fd(stop._writer, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, stop._on_signal)
        return stop

    def started(self) -> None:
        """From now on a stop is only recorded, for the event loop to act on; called before
        the Temporal runtime exists, whose threads must be shut down in order."""
        self._starting = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes. A second signal changes nothing;
        # supervisord sends SIGKILL after stopwaitsecs anyway.
        if self.received is None:
            self.received = signal.Signals(signum)
        if self._starting:
            self._starting = False
            raise StopBeforeStart(self.received.name)

    def _drain(self) -> None:
        """Reads what the wakeup pipe holds and records the first stop signal in it."""
        while True:
            try:
                data = os.read(self._reader, 256)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for byte in data:
                if byte in STOP_SIGNALS and self.received is None:
                    self.received = signal.Signals(byte)

    def arrived(self) -> bool:
        """Whether SIGTERM or SIGINT has arrived (without waiting)."""
        self._drain()
        return self.received is not None

    async def wait(self) -> signal.Signals:
        """Returns once SIGTERM or SIGINT has arrived (at once if one came earlier)."""
        import asyncio  # not at the top: it takes a while, and install() must come first

        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def on_readable() -> None:
            if self.arrived():
                arrived.set()

        loop.add_reader(self._reader, on_readable)
        try:
            if not self.arrived():
                await arrived.wait()
        finally:
            loop.remove_reader(self._reader)
        assert self.received is not None
        return self.received
