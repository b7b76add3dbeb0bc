"""Releases this rented box after IDLE_RELEASE_MINUTES without batch work (supervisord
program `autostop`, started when IDLE_RELEASE_MINUTES > 0).

    python -m workers.autostop            watch, then stop or destroy this instance
    python -m workers.autostop batches    print the batch ids in this stack's bucket

Work, checked every tenth of the idle limit (30 s at most); any of it restarts the idle clock:
- a batch workflow running on the CPU queue (a batch this box could serve is unfinished);
- a backlog on the GPU task queue;
- this box's own record (`boxes/{BOX_NAME}.json`) showing requests in flight, or a
  `requests_total` that moved since the last check (a request was served).

A dependency that cannot be read (Temporal or S3 gone, e.g. the laptop's tunnel closed)
shows no work: a box that cannot reach them cannot serve a batch either; the log says so.

Releasing goes through the Vast.ai API with the instance's own id and scoped key, which
Vast sets in the container's environment (`CONTAINER_ID`, `CONTAINER_API_KEY`): read from
the settings, else from the container's first process (a stack started over SSH does not
inherit the container's environment). IDLE_RELEASE_ACTION `destroy` stops the meter and
deletes the disk; `stop` keeps the disk (it still bills); `auto` destroys in hybrid mode
(results live in the shared S3) and stops in standalone and local mode (the box's own S3
holds the only copy).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from kernel.boxes import read_boxes
from kernel.config import Settings, load_settings_or_exit
from kernel.inputs import BATCH_WORKFLOW
from kernel.logs import configure_logging
from kernel.periodic import REMINDER_SECONDS
from kernel.storage import make_minio
from kernel.temporal import connect_temporal

logger = logging.getLogger("autostop")


@dataclass
class Work:
    """What the box saw at one check; `why` names each kind of work found."""

    batches: int = 0
    backlog: int = 0
    in_flight: int = 0
    requests_total: int | None = None
    unknown: tuple[str, ...] = ()

    def why(self, last_total: int | None) -> list[str]:
        reasons = []
        if self.batches:
            reasons.append(f"{self.batches} batch(es) running")
        if self.backlog:
            reasons.append(f"{self.backlog} task(s) waiting on the GPU queue")
        if self.in_flight:
            reasons.append(f"{self.in_flight} request(s) in flight here")
        if (
            self.requests_total is not None
            and last_total is not None
            and self.requests_total != last_total
        ):
            reasons.append(f"{self.requests_total - last_total} request(s) served")
        return reasons


class IdleClock:
    """Seconds since the last work; resets on work."""

    def __init__(self, now: float) -> None:
        self.since = now
        self.last_total: int | None = None

    def observe(self, work: Work, now: float) -> list[str]:
        reasons = work.why(self.last_total)
        if work.requests_total is not None:
            self.last_total = work.requests_total
        if reasons:
            self.since = now
        return reasons

    def idle_for(self, now: float) -> float:
        return now - self.since


def container_value(name: str, settings_value: str, environ: Path = Path("/proc/1/environ")) -> str:
    """A value Vast sets in the container: from the settings, else from the container's
    first process (whose environment is the container's)."""
    if settings_value:
        return settings_value
    try:
        for entry in environ.read_bytes().split(b"\0"):
            key, _, value = entry.partition(b"=")
            if key.decode(errors="replace") == name:
                return value.decode(errors="replace")
    except OSError:
        pass
    return ""


def vast_variable(name: str, default: str = "") -> str:
    """A variable Vast.ai sets in the container (CONTAINER_ID, CONTAINER_API_KEY, VAST_URL):
    the platform's, not one of the project's settings, so not in Settings. VAST_INSTANCE_ID
    is the id the autopilot writes into the env file of a box it rented."""
    return os.environ.get(name) or container_value(name, "") or default


def check_interval(settings: Settings) -> float:
    return max(0.2, min(30.0, settings.IDLE_RELEASE_MINUTES * 60 / 10))


def release_action(settings: Settings) -> str:
    if settings.IDLE_RELEASE_ACTION != "auto":
        return settings.IDLE_RELEASE_ACTION
    return "destroy" if settings.DEPLOY_MODE == "hybrid" else "stop"


async def release_instance(settings: Settings, action: str) -> str:
    """Stops or destroys this instance through the Vast API; returns what was done."""
    instance = vast_variable("CONTAINER_ID") or os.environ.get("VAST_INSTANCE_ID", "")
    key = vast_variable("CONTAINER_API_KEY")
    if not instance or not key:
        raise RuntimeError(
            "cannot release this box: CONTAINER_ID and CONTAINER_API_KEY are not set "
            "(Vast sets them inside an instance)"
        )
    server = vast_variable("VAST_URL", "https://console.vast.ai").rstrip("/")
    url = f"{server}/api/v0/instances/{instance}/"
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as client:
        if action == "destroy":
            response = await client.delete(url, headers=headers)
        else:
            response = await client.put(url, headers=headers, json={"state": "stopped"})
    if response.status_code >= 400:
        raise RuntimeError(
            f"the Vast API refused to {action} instance {instance}: "
            f"HTTP {response.status_code} {response.text[:200]}"
        )
    return f"{action}ed instance {instance}".replace("stoped", "stopped")


async def temporal_work(settings: Settings, work: Work) -> None:
    """Batches running on the CPU queue and the GPU queue's backlog."""
    client = await connect_temporal(settings, identity=f"autostop@{settings.box_name}")
    counted = await client.count_workflows(
        f"WorkflowType = '{BATCH_WORKFLOW}' AND ExecutionStatus = 'Running' "
        f"AND TaskQueue = '{settings.CPU_TASK_QUEUE}'"
    )
    work.batches = counted.count
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=settings.TEMPORAL_NAMESPACE,
            task_queue=TaskQueue(
                name=settings.GPU_TASK_QUEUE, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
            ),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            report_stats=True,
        ),
        timeout=timedelta(seconds=5),
    )
    work.backlog = response.stats.approximate_backlog_count


async def box_work(settings: Settings, work: Work) -> None:
    """This box's own record: requests in flight and served."""
    s3 = make_minio(settings)
    records = await asyncio.to_thread(
        read_boxes, s3, settings.MINIO_BUCKET, settings.GPU_TASK_QUEUE
    )
    mine = [r for r in records if r.box == settings.box_name and r.live]
    if mine:
        work.in_flight = mine[0].in_flight
        work.requests_total = mine[0].requests_total


Probe = Callable[[Settings, Work], Awaitable[None]]


async def look_for_work(
    settings: Settings,
    probes: tuple[tuple[str, Probe], ...] = (
        ("Temporal", temporal_work),
        ("S3", box_work),
    ),
) -> Work:
    work = Work()
    unknown = []
    for name, probe in probes:
        try:
            await probe(settings, work)
        except Exception as exc:  # RPCError, S3Error, connection refused, timeouts alike
            unknown.append(f"{name} ({exc or type(exc).__name__})")
    work.unknown = tuple(unknown)
    return work


async def watch(
    settings: Settings,
    look: Callable[[Settings], Awaitable[Work]] = look_for_work,
    release: Callable[[Settings, str], Awaitable[str]] = release_instance,
) -> str:
    """Checks until the box was idle for IDLE_RELEASE_MINUTES, then releases it."""
    limit = settings.IDLE_RELEASE_MINUTES * 60
    action = release_action(settings)
    clock = IdleClock(time.monotonic())
    last_unreadable: tuple[str, ...] = ()
    reminded = 0.0
    logger.info(
        "autostop: box %s will %s itself after %.0fs without batch work",
        settings.box_name,
        action,
        limit,
    )
    while True:
        work = await look(settings)
        now = time.monotonic()
        reasons = clock.observe(work, now)
        if reasons:
            logger.debug("autostop: busy: %s", "; ".join(reasons))
        unreadable = tuple(what.split(" (", 1)[0] for what in work.unknown)
        if unreadable and (unreadable != last_unreadable or now - reminded >= REMINDER_SECONDS):
            # Once when it starts (or what is unreadable changes), then a reminder every few
            # minutes: a control plane away for long (the laptop asleep) must not fill the log.
            logger.warning("autostop: cannot read %s: counted as no work", ", ".join(work.unknown))
            reminded = now
        elif last_unreadable and not unreadable:
            logger.info("autostop: %s readable again", ", ".join(last_unreadable))
        last_unreadable = unreadable
        idle = clock.idle_for(now)
        if idle >= limit:
            why = (
                f"no batch running, no GPU-queue backlog and no request on box "
                f"{settings.box_name} for {idle:.0f}s (IDLE_RELEASE_MINUTES="
                f"{settings.IDLE_RELEASE_MINUTES:g})"
            )
            logger.warning("autostop: %s: releasing the instance (%s)", why, action)
            try:
                done = await release(settings, action)
            except (RuntimeError, httpx.HTTPError) as exc:
                logger.error("autostop: %s", exc)
            else:
                logger.warning("autostop: %s", done)
                return done
        await asyncio.sleep(check_interval(settings))


def list_batches(settings: Settings) -> list[str]:
    s3 = make_minio(settings)
    ids = []
    for item in s3.list_objects(settings.MINIO_BUCKET, prefix="batches/"):
        if item.object_name and item.is_dir:
            ids.append(item.object_name.removeprefix("batches/").strip("/"))
    return sorted(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.autostop")
    parser.add_argument("command", nargs="?", choices=("watch", "batches"), default="watch")
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    if args.command == "batches":
        for batch_id in list_batches(settings):
            print(batch_id)
        return 0
    configure_logging(settings.LOG_LEVEL)
    if settings.IDLE_RELEASE_MINUTES <= 0:
        logger.info("autostop: IDLE_RELEASE_MINUTES is 0: off")
        while True:  # supervisord counts a quick exit as a failed start
            time.sleep(3600)
    asyncio.run(watch(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
