"""Task queue reports and the reconciler that starts workers for waiting work."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from minio import Minio

from app.api.schemas import QueuesReport
from app.services.temporal import TaskQueueState, TemporalService
from kernel.boxes import read_boxes
from kernel.config import Settings
from kernel.inputs import BATCH_WORKFLOW
from kernel.periodic import Periodic
from kernel.storage import S3_FAILURES
from kernel.supervisor import (
    RUNNING_STATES,
    WORKER_PROGRAMS,
    SupervisorControl,
    SupervisorUnavailable,
)

logger = logging.getLogger(__name__)


async def _program_states(supervisor: SupervisorControl) -> dict[str, str] | None:
    try:
        return {name: info.state for name, info in (await supervisor.programs()).items()}
    except SupervisorUnavailable:
        return None


async def queue_states(settings: Settings, temporal: TemporalService) -> dict[str, TaskQueueState]:
    names = settings.task_queues
    states = await asyncio.gather(*(temporal.describe_task_queue(q) for q in names.values()))
    return dict(zip(names, states, strict=True))


async def boxes_report(settings: Settings, s3: Minio) -> tuple[list[dict[str, Any]], str | None]:
    """The GPU boxes that reported on this GPU queue, and why they could not be read."""
    now = time.time()
    try:
        records = await asyncio.to_thread(
            read_boxes, s3, settings.MINIO_BUCKET, settings.GPU_TASK_QUEUE, now
        )
    except S3_FAILURES as exc:
        return [], f"could not read the box records from S3: {exc}"
    boxes = []
    for record in records:
        box = record.model_dump(exclude={"task_queue", "last_seen"})
        box["last_seen"] = datetime.fromtimestamp(record.last_seen, UTC).isoformat()
        box["seconds_ago"] = round(max(now - record.last_seen, 0.0), 1)
        boxes.append(box)
    return boxes, None


async def queues_report(
    settings: Settings,
    temporal: TemporalService,
    supervisor: SupervisorControl,
    s3: Minio | None = None,
) -> QueuesReport:
    states, programs = await asyncio.gather(
        queue_states(settings, temporal), _program_states(supervisor)
    )
    boxes, boxes_error = await boxes_report(settings, s3) if s3 is not None else ([], None)
    report: dict[str, Any] = {}
    for queue, state in states.items():
        live = state.live_pollers(settings.POLLER_LIVE_SECONDS)
        program = WORKER_PROGRAMS[queue]
        report[queue] = {
            "task_queue": state.name,
            "backlog": state.backlog,
            "live_pollers": len(live),
            "pollers": [
                {"identity": p.identity, "last_access_time": p.last_access_time.isoformat()}
                for p in live
            ],
            "worker": {
                "program": program,
                "state": programs.get(program, "UNKNOWN") if programs is not None else None,
            },
        }
    return QueuesReport.model_validate(
        {
            "queues": report,
            "supervisor_reachable": programs is not None,
            "boxes": boxes,
            "boxes_error": boxes_error,
        }
    )


class Reconciler:
    """Starts a worker program whose queue has a backlog and no live poller.

    Retries and timers fire after a worker left, and a worker may have crashed out of its
    retries: this loop makes sure waiting work always gets a worker.
    """

    def __init__(
        self, settings: Settings, temporal: TemporalService, supervisor: SupervisorControl
    ) -> None:
        self.settings = settings
        self.temporal = temporal
        self.supervisor = supervisor
        self._loop = Periodic(
            "worker-reconciler",
            self.reconcile_once,
            settings.RECONCILE_INTERVAL_SECONDS,
            logger,
            "reconciler",
            failure_level=logging.DEBUG,
        )

    async def reconcile_once(self) -> list[str]:
        """Returns the programs it started."""
        if not self.supervisor.socket_path.exists():
            return []
        started: list[str] = []
        states, programs = await asyncio.gather(
            queue_states(self.settings, self.temporal), _program_states(self.supervisor)
        )
        for queue, state in states.items():
            program = WORKER_PROGRAMS[queue]
            # The server lists a worker that just exited as a poller for a while: a local
            # program that is not running needs starting whatever the poller list says.
            locally_stopped = programs is not None and programs.get(program) not in RUNNING_STATES
            no_live_poller = not state.live_pollers(self.settings.POLLER_LIVE_SECONDS)
            waiting = state.backlog > 0 and (no_live_poller or locally_stopped)
            if not waiting and queue == "gpu" and locally_stopped:
                waiting = await self._fleet_needs_this_box()
            if waiting:
                result = await self.supervisor.start(program)
                if result.outcome == "started":
                    why = (
                        f"has {state.backlog} waiting task(s) and no live poller"
                        if state.backlog > 0
                        else "serves a running batch from other boxes"
                    )
                    logger.info("reconciler: %s %s; started %s", state.name, why, result.program)
                    started.append(result.program)
        gpu = WORKER_PROGRAMS["gpu"]
        if programs is not None and programs.get(gpu) not in RUNNING_STATES and gpu not in started:
            # Single requests wait on the GPU worker's urgent queue (a task of a worker that
            # died comes back there after its timeout): they need that worker too.
            urgent = await self.temporal.describe_task_queue(self.settings.gpu_urgent_task_queue)
            if urgent.backlog > 0:
                result = await self.supervisor.start(gpu)
                if result.outcome == "started":
                    logger.info(
                        "reconciler: %s has %d waiting request(s); started %s",
                        urgent.name,
                        urgent.backlog,
                        gpu,
                    )
                    started.append(gpu)
        return started

    async def _fleet_needs_this_box(self) -> bool:
        """In a fleet the live boxes take every shard in flight, so the GPU queue shows no
        backlog to a box whose worker is stopped; it joins while any batch runs (the window
        then grows by its slots)."""
        if not self.settings.runs_llama:
            return False
        client = await self.temporal.client()
        running = await client.count_workflows(
            f"WorkflowType = '{BATCH_WORKFLOW}' AND ExecutionStatus = 'Running' "
            f"AND TaskQueue = '{self.settings.CPU_TASK_QUEUE}'"
        )
        return running.count > 0

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
