"""What each worker runs: the CPU worker runs batch workflows and I/O activities, the GPU
worker runs inference activities against the local llama-server and, on its urgent queue,
the single-request workflow whose request it runs as a local activity (one task hand-over
instead of three, and room that batch shards never take)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.worker import FixedSizeSlotSupplier, WorkerTuner

from kernel.config import Settings
from kernel.storage import ensure_bucket, make_minio
from workers.activities.batch_io import BatchIOActivities
from workers.activities.capacity import CapacityActivities
from workers.activities.inference import InferenceActivities
from workers.box import BoxReporter, MeteredLlama
from workers.health import BoxWatch, LlamaHealth, ShardSlots, s3_probe_client
from workers.llama import LlamaClient
from workers.workflows.batch import BatchWorkflow
from workers.workflows.process import ProcessWorkflow

# Shard activities one GPU worker runs at once (BATCH_WINDOW's default): the requests of the
# next shard take over the slots of one that is finishing. They are all the GPU queue's
# activity slots, and the room the box reports (`shard_room`): every spare slot there would be
# a shard this box takes from a box with free llama-server slots. Single /process requests
# have a worker of their own on the urgent queue, where shards never go, so a GPU worker full
# of shards still takes them.
GPU_CONCURRENT_SHARDS = 4
PROCESS_REQUESTS_ROOM = 16
CPU_CONCURRENT_ACTIVITIES = 8
# The SDK's default for the kinds of slot the GPU queue's worker does not gate.
DEFAULT_SLOTS = 100
# A cancel reaches a running shard in the answer to its next heartbeat; the SDK otherwise
# sends them at 80% of the heartbeat timeout (12 s), so cancelled requests ran that long.
GPU_HEARTBEAT_THROTTLE = timedelta(seconds=1)


@dataclass
class Registry:
    workflows: Sequence[type] = ()
    activities: Sequence[Callable[..., Any]] = ()
    max_concurrent_activities: int | None = None
    # Instead of max_concurrent_activities: the GPU queue's slots, none while llama-server
    # is gone (see workers/health.py).
    tuner: WorkerTuner | None = None
    activity_executor: ThreadPoolExecutor | None = None
    max_heartbeat_throttle_interval: timedelta = timedelta(seconds=60)  # the SDK's default
    # Workflows and activities served on Settings.gpu_urgent_task_queue, with room of their
    # own: the single-request workflow and its request, run there as a local activity.
    urgent_workflows: Sequence[type] = ()
    urgent_activities: Sequence[Callable[..., Any]] = ()
    urgent_max_concurrent_activities: int | None = None
    _llama: LlamaClient | None = field(default=None, repr=False)
    box_reporter: BoxReporter | None = None
    llama_watch: BoxWatch | None = None

    def start(self) -> None:
        """Starts what runs beside the worker (the GPU box's record and llama-server probe);
        inside its loop."""
        if self.llama_watch is not None:
            self.llama_watch.start()
        if self.box_reporter is not None:
            self.box_reporter.start()

    async def close(self) -> None:
        if self.box_reporter is not None:
            await self.box_reporter.stop()
        if self.llama_watch is not None:
            await self.llama_watch.stop()
        if self.activity_executor is not None:
            self.activity_executor.shutdown(wait=False)
        if self._llama is not None:
            await self._llama.close()


def build_registry(queue: str, settings: Settings) -> Registry:
    s3 = make_minio(settings)
    if queue == "cpu":
        ensure_bucket(s3, settings.MINIO_BUCKET)
        io = BatchIOActivities(s3)
        return Registry(
            workflows=[BatchWorkflow],
            activities=[io.split_input, io.merge_results, CapacityActivities(s3).live_capacity],
            max_concurrent_activities=CPU_CONCURRENT_ACTIVITIES,
            activity_executor=ThreadPoolExecutor(
                CPU_CONCURRENT_ACTIVITIES, thread_name_prefix="io-activity"
            ),
        )
    health = LlamaHealth(settings.LLAMA_DOWN_HANDOVER_SECONDS, settings.LLAMA_URL)
    llama = MeteredLlama(
        settings.LLAMA_URL,
        request_timeout=settings.LLAMA_REQUEST_TIMEOUT_SECONDS,
        retry_budget_seconds=settings.LLAMA_REQUEST_TIMEOUT_SECONDS,
        health=health,
    )
    inference = InferenceActivities(
        s3, llama, settings.box_name, health, price_per_hour=settings.BOX_PRICE_PER_HOUR
    )
    shard_slots = ShardSlots(GPU_CONCURRENT_SHARDS, health)
    return Registry(
        activities=[inference.run_shard],
        tuner=WorkerTuner.create_composite(
            workflow_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS),
            activity_supplier=shard_slots,
            local_activity_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS),
            nexus_supplier=FixedSizeSlotSupplier(DEFAULT_SLOTS),
        ),
        max_heartbeat_throttle_interval=GPU_HEARTBEAT_THROTTLE,
        urgent_workflows=[ProcessWorkflow],
        urgent_activities=[inference.process_request],
        urgent_max_concurrent_activities=PROCESS_REQUESTS_ROOM,
        _llama=llama,
        box_reporter=BoxReporter(
            # Short timeouts and no retries, as for the probe: the next report is the retry.
            # With the workers' client a report hung on an S3 that went away (the laptop
            # asleep) for up to 6 x 120 s, and the box's record stayed stale (so the batch
            # window shrank to its floor) for minutes after S3 came back.
            s3_probe_client(settings),
            settings.MINIO_BUCKET,
            settings.box_name,
            settings.GPU_TASK_QUEUE,
            llama,
            shard_room=shard_slots.size,
            price_per_hour=settings.BOX_PRICE_PER_HOUR,
        ),
        llama_watch=BoxWatch(
            health,
            llama.check_health,
            llama.check_request,
            s3_probe_client(settings),
            settings.MINIO_BUCKET,
        ),
    )
