"""Worker entry point: `python -m workers --queue cpu|gpu`.

Polls its task queue until SIGTERM (graceful shutdown, exit 0) or until it has been idle for
WORKER_IDLE_EXIT_SECONDS (exit 0, so supervisord leaves it stopped). Any other exit is a
crash and supervisord restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from collections.abc import Sequence
from datetime import timedelta

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from kernel.config import Settings, load_settings_or_exit
from kernel.logs import configure_logging
from kernel.temporal import connect_temporal
from workers.idle import IdleTracker
from workers.registry import build_registry

logger = logging.getLogger("workers")

# supervisord's stopwaitsecs for workers is 30 s: finish in-flight work well within it.
GRACEFUL_SHUTDOWN = timedelta(seconds=20)
CONNECT_ATTEMPTS_SECONDS = 60.0
IDLE_CHECK_SECONDS = 1.0
RUNNING_WORKFLOWS_CHECK_SECONDS = 10.0


def metrics_runtime(port: int) -> Runtime | None:
    """A Temporal runtime exporting the SDK's own metrics (task latencies, slots, polls,
    activity and workflow counts) as Prometheus text on 127.0.0.1:port; None when 0."""
    if not port:
        return None
    # Prometheus' own conventions: durations in seconds, unit and _total suffixes.
    prometheus = PrometheusConfig(
        bind_address=f"127.0.0.1:{port}",
        counters_total_suffix=True,
        unit_suffix=True,
        durations_as_seconds=True,
    )
    telemetry = TelemetryConfig(metrics=prometheus)
    logger.info("Temporal SDK metrics on http://127.0.0.1:%d/metrics", port)
    return Runtime(telemetry=telemetry)


async def connect_with_retry(
    settings: Settings, identity: str, runtime: Runtime | None = None
) -> Client:
    deadline = asyncio.get_running_loop().time() + CONNECT_ATTEMPTS_SECONDS
    delay = 0.5
    while True:
        try:
            return await connect_temporal(settings, identity=identity, runtime=runtime)
        except Exception as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(
                    f"error: Temporal at {settings.TEMPORAL_ADDRESS} unreachable for "
                    f"{CONNECT_ATTEMPTS_SECONDS:g}s: {exc}"
                ) from exc
            logger.warning("Temporal not reachable yet (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def has_running_workflows(client: Client, task_queues: Sequence[str]) -> bool:
    """Workflows in progress on these queues still need this worker for their next steps
    (a workflow task of a worker that died comes back only after its timeout)."""
    try:
        for task_queue in task_queues:
            count = await client.count_workflows(
                f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
            )
            if count.count > 0:
                return True
    except Exception as exc:  # visibility trouble must not keep a worker forever
        logger.debug("could not count running workflows: %s", exc)
    return False


async def wait_until_idle(
    tracker: IdleTracker, idle_seconds: float, client: Client, workflow_queues: Sequence[str]
) -> None:
    last_workflow_check = 0.0
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(IDLE_CHECK_SECONDS)
        due = loop.time() - last_workflow_check >= RUNNING_WORKFLOWS_CHECK_SECONDS
        if workflow_queues and due:
            last_workflow_check = loop.time()
            if await has_running_workflows(client, workflow_queues):
                tracker.touch()
        if tracker.idle_seconds() >= idle_seconds:
            return


async def run(queue: str, settings: Settings) -> int:
    task_queue = settings.task_queues[queue]
    identity = f"worker-{queue}@{socket.gethostname()}:{os.getpid()}"
    runtime = metrics_runtime(settings.worker_metrics_ports[queue])
    client = await connect_with_retry(settings, identity, runtime)
    registry = build_registry(queue, settings)
    tracker = IdleTracker()
    workers = [
        Worker(
            client,
            task_queue=task_queue,
            workflows=registry.workflows,
            activities=registry.activities,
            interceptors=[tracker],
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            max_concurrent_activities=registry.max_concurrent_activities,
            tuner=registry.tuner,
            max_heartbeat_throttle_interval=registry.max_heartbeat_throttle_interval,
            activity_executor=registry.activity_executor,
            identity=identity,
        )
    ]
    if registry.urgent_workflows or registry.urgent_activities:
        workers.append(
            Worker(
                client,
                task_queue=settings.gpu_urgent_task_queue,
                workflows=registry.urgent_workflows,
                activities=registry.urgent_activities,
                interceptors=[tracker],
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
                max_concurrent_activities=registry.urgent_max_concurrent_activities,
                identity=identity,
            )
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    logger.info("worker %s polling %s", identity, ", ".join(w.task_queue for w in workers))
    worker_tasks = [asyncio.create_task(w.run()) for w in workers]
    registry.start()
    stop_task = asyncio.create_task(stop.wait())
    waiters: set[asyncio.Task[object]] = {*worker_tasks, stop_task}
    idle_limit = settings.WORKER_IDLE_EXIT_SECONDS
    workflow_queues = [task_queue] if registry.workflows else []
    if registry.urgent_workflows:
        workflow_queues.append(settings.gpu_urgent_task_queue)
    if idle_limit > 0:
        waiters.add(
            asyncio.create_task(wait_until_idle(tracker, idle_limit, client, workflow_queues))
        )
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for worker_task in worker_tasks:
        if worker_task in done:
            worker_task.result()  # the worker failed by itself: raise, exit non-zero
            return 1
    if stop_task in done:
        logger.info("stop requested; finishing in-flight work (up to %s)", GRACEFUL_SHUTDOWN)
    else:
        logger.info("idle for %ss; exiting", idle_limit)
    for task in pending:
        if task not in worker_tasks:
            task.cancel()
    await asyncio.gather(*(w.shutdown() for w in workers))
    await asyncio.gather(*worker_tasks)
    await registry.close()
    logger.info("worker %s stopped", identity)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Temporal worker for one task queue.")
    parser.add_argument("--queue", choices=("cpu", "gpu"), required=True)
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    configure_logging(settings.LOG_LEVEL)
    return asyncio.run(run(args.queue, settings))


if __name__ == "__main__":
    raise SystemExit(main())
