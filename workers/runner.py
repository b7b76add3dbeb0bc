"""What `python -m workers --queue cpu|gpu` runs once its stop signals are caught.

Polls its task queue until SIGTERM (graceful shutdown, exit 0) or until it has been idle for
WORKER_IDLE_EXIT_SECONDS (exit 0, so supervisord leaves it stopped). Any other exit is a
crash and supervisord restarts it. A SIGTERM at any moment, while connecting too, is a stop:
the worker finishes what it started and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
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
from workers.registry import Registry, build_registry
from workers.stop import StopSignals

logger = logging.getLogger("workers")

# supervisord's stopwaitsecs for workers is 30 s: finish in-flight work well within it.
GRACEFUL_SHUTDOWN = timedelta(seconds=20)
CONNECT_ATTEMPTS_SECONDS = 60.0
IDLE_CHECK_SECONDS = 1.0
RUNNING_WORKFLOWS_CHECK_SECONDS = 10.0


def worker_runtime(port: int) -> Runtime:
    """The worker's own Temporal runtime (rather than the SDK's process-wide default, so
    that it is dropped, and its threads stopped, before the interpreter exits). With a port,
    it exports the SDK's own metrics (task latencies, slots, polls, activity and workflow
    counts) as Prometheus text on 127.0.0.1:port."""
    if not port:
        return Runtime(telemetry=TelemetryConfig())
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


async def run(queue: str, settings: Settings, stop: StopSignals) -> int:
    stopping = asyncio.create_task(stop.wait())
    try:
        return await serve(queue, settings, stopping)
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping


async def serve(queue: str, settings: Settings, stopping: asyncio.Task[object]) -> int:
    identity = f"worker-{queue}@{socket.gethostname()}:{os.getpid()}"
    runtime = worker_runtime(settings.worker_metrics_ports[queue])
    connecting = asyncio.create_task(connect_with_retry(settings, identity, runtime))
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        logger.info("stop requested while connecting to Temporal; exiting")
        return 0
    client = connecting.result()
    registry = build_registry(queue, settings)
    try:
        if stopping.done():
            logger.info("stop requested while starting; exiting")
            return 0
        return await poll_until_stopped(queue, settings, client, registry, identity, stopping)
    finally:
        await registry.close()


async def poll_until_stopped(
    queue: str,
    settings: Settings,
    client: Client,
    registry: Registry,
    identity: str,
    stopping: asyncio.Task[object],
) -> int:
    task_queue = settings.task_queues[queue]
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

    logger.info("worker %s polling %s", identity, ", ".join(w.task_queue for w in workers))
    worker_tasks = [asyncio.create_task(w.run()) for w in workers]
    registry.start()
    waiters: set[asyncio.Task[object]] = {*worker_tasks, stopping}
    idle_limit = settings.WORKER_IDLE_EXIT_SECONDS
    workflow_queues = [task_queue] if registry.workflows else []
    if registry.urgent_workflows:
        workflow_queues.append(settings.gpu_urgent_task_queue)
    idle_task: asyncio.Task[None] | None = None
    if idle_limit > 0:
        idle_task = asyncio.create_task(
            wait_until_idle(tracker, idle_limit, client, workflow_queues)
        )
        waiters.add(idle_task)
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    failed = next((t for t in worker_tasks if t in done), None)
    if failed is not None:
        logger.error("worker %s stopped by itself; shutting the others down", identity)
    elif stopping in done:
        logger.info("stop requested; finishing in-flight work (up to %s)", GRACEFUL_SHUTDOWN)
    else:
        logger.info("idle for %ss; exiting", idle_limit)
    if idle_task is not None:
        idle_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await idle_task
    # Every worker is shut down and its run() awaited, even after one failed: a worker left
    # running when the loop closes is what aborts a process at exit.
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    results = await asyncio.gather(*worker_tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if failed is not None or errors:
        for error in errors:
            logger.error("worker failed: %r", error, exc_info=error)
        return 1
    logger.info("worker %s stopped", identity)
    return 0


def run_worker(queue: str, stop: StopSignals) -> int:
    """Runs the worker until it stops; returns the exit code. Everything the Temporal SDK
    runs natively (workers, client, runtime and their threads) is gone when this returns."""
    settings = load_settings_or_exit()
    configure_logging(settings.LOG_LEVEL)
    stop.started()
    if stop.arrived():
        logger.info("stop requested while starting; exiting")
        return 0
    code = asyncio.run(run(queue, settings, stop))
    # The runtime's threads stop when it is dropped: here, while the interpreter is whole,
    # not during its finalization (temporalio/sdk-python#300 aborts there).
    gc.collect()
    return code
