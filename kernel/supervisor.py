"""Control of supervisord programs over its XML-RPC unix socket.

Starting a worker is best-effort: where the API is not colocated with supervisord (no
socket), the result says so and nothing fails. Calls never wait for a program's
`startsecs`: readiness is checked elsewhere (pollers, /health).
"""

from __future__ import annotations

import asyncio
import logging
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from supervisor.xmlrpc import Faults, SupervisorTransport

logger = logging.getLogger(__name__)

StartOutcome = Literal["started", "already_running", "unavailable", "error"]
RUNNING_STATES = frozenset({"RUNNING", "STARTING"})
WORKER_PROGRAMS = {"cpu": "worker-cpu", "gpu": "worker-gpu"}


class SupervisorUnavailable(Exception):
    """supervisord cannot be reached (not colocated, not running, or not answering)."""


@dataclass(frozen=True)
class ProgramInfo:
    name: str
    state: str
    description: str
    pid: int
    exit_status: int
    spawn_error: str


@dataclass(frozen=True)
class StartResult:
    program: str
    outcome: StartOutcome
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("started", "already_running")


class SupervisorControl:
    def __init__(self, socket_path: Path, timeout: float = 2.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _call(self, method: str, *args: Any) -> Any:
        if not self.socket_path.exists():
            raise SupervisorUnavailable(f"no supervisord socket at {self.socket_path}")
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy.supervisor, method)(*args)
        except OSError as exc:
            raise SupervisorUnavailable(
                f"supervisord at {self.socket_path} is not answering: {exc}"
            ) from exc
        finally:
            transport.close()

    async def _acall(self, method: str, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._call, method, *args), self.timeout
            )
        except TimeoutError as exc:
            raise SupervisorUnavailable(
                f"supervisord did not answer {method} within {self.timeout:g}s"
            ) from exc

    async def programs(self) -> dict[str, ProgramInfo]:
        return _program_infos(await self._acall("getAllProcessInfo"))

    async def start(self, program: str) -> StartResult:
        """Starts a program without waiting for it; already running counts as success."""
        try:
            await self._acall("startProcess", program, False)
        except SupervisorUnavailable as exc:
            return StartResult(program, "unavailable", str(exc))
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == Faults.ALREADY_STARTED:
                return StartResult(program, "already_running")
            logger.warning("could not start %s: %s", program, fault.faultString)
            return StartResult(program, "error", fault.faultString)
        logger.info("started %s on demand", program)
        return StartResult(program, "started")

    # Blocking calls, for scripts that run outside an event loop (deploy/instance/). They
    # raise SupervisorUnavailable, or xmlrpc.client.Fault with supervisord's reason.

    def programs_sync(self) -> dict[str, ProgramInfo]:
        return _program_infos(self._call("getAllProcessInfo"))

    def start_sync(self, program: str, wait: bool = True) -> None:
        """Starts a program; with `wait`, returns once it is RUNNING (after `startsecs`)."""
        self._call("startProcess", program, wait)

    def stop_sync(self, program: str, wait: bool = True) -> None:
        """Stops a program; a program that is not running is left as it is."""
        try:
            self._call("stopProcess", program, wait)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.NOT_RUNNING:
                raise

    def restart_sync(self, program: str) -> None:
        """What `supervisorctl restart` does: stop, wait, start, wait until RUNNING."""
        self.stop_sync(program)
        self.start_sync(program)


def _program_infos(infos: list[dict[str, Any]]) -> dict[str, ProgramInfo]:
    return {
        info["name"]: ProgramInfo(
            name=info["name"],
            state=info["statename"],
            description=info.get("description", ""),
            pid=info.get("pid", 0),
            exit_status=info.get("exitstatus", 0),
            spawn_error=info.get("spawnerr", ""),
        )
        for info in infos
    }
