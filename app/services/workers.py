"""Starting the on-demand worker programs that submitted work needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from kernel.supervisor import WORKER_PROGRAMS, StartOutcome, SupervisorControl

# A worker exits only after WORKER_IDLE_EXIT_SECONDS without work, and supervisord restarts
# one that crashes, so a worker seen running this recently is still there: a burst of
# requests asks supervisord once, not once per request (each ask is ~2 ms of CPU on a box
# whose cores also feed llama-server). The reconciler covers whatever slips through.
RECENTLY_RUNNING_SECONDS = 1.0


class WorkerStarter:
    def __init__(
        self,
        supervisor: SupervisorControl,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.supervisor = supervisor
        self.enabled = enabled
        self._clock = clock
        self._running_at: dict[str, float] = {}

    async def ensure(self, queues: tuple[str, ...] = ("cpu", "gpu")) -> dict[str, StartOutcome]:
        """Each queue's worker program → what starting it did; {} with AUTO_START_WORKERS
        off. Never raises: where supervisord is unreachable the outcome says so."""
        if not self.enabled:
            return {}
        programs = [WORKER_PROGRAMS[queue] for queue in queues]
        outcomes: dict[str, StartOutcome] = {}
        to_start = []
        for program in programs:
            seen = self._running_at.get(program)
            if seen is not None and self._clock() - seen < RECENTLY_RUNNING_SECONDS:
                outcomes[program] = "already_running"
            else:
                to_start.append(program)
        for result in await asyncio.gather(*(self.supervisor.start(p) for p in to_start)):
            outcomes[result.program] = result.outcome
            if result.ok:
                self._running_at[result.program] = self._clock()
            else:
                self._running_at.pop(result.program, None)
        return {program: outcomes[program] for program in programs}
