"""What each worker runs: the CPU worker runs batch workflows and I/O activities, the GPU
worker runs inference activities against the local llama-server, and the single-request
workflow whose request it runs as a local activity (one task hand-over instead of three)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kernel.config import Settings
from kernel.storage import ensure_bucket, make_minio
from workers.activities.batch_io import BatchIOActivities
from workers.activities.inference import InferenceActivities
from workers.llama import LlamaClient
from workers.workflows.batch import BatchWorkflow
from workers.workflows.process import ProcessWorkflow

# Shard activities one GPU worker runs at once (BATCH_WINDOW's default): the requests of the
# next shard take over the slots of one that is finishing. Single /process requests get
# room of their own on top.
GPU_CONCURRENT_SHARDS = 4
PROCESS_REQUESTS_ROOM = 16
CPU_CONCURRENT_ACTIVITIES = 8


@dataclass
class Registry:
    workflows: Sequence[type] = ()
    activities: Sequence[Callable[..., Any]] = ()
    max_concurrent_activities: int | None = None
    activity_executor: ThreadPoolExecutor | None = None
    _llama: LlamaClient | None = field(default=None, repr=False)

    async def close(self) -> None:
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
            activities=[io.split_input, io.merge_results],
            max_concurrent_activities=CPU_CONCURRENT_ACTIVITIES,
            activity_executor=ThreadPoolExecutor(
                CPU_CONCURRENT_ACTIVITIES, thread_name_prefix="io-activity"
            ),
        )
    llama = LlamaClient(
        settings.LLAMA_URL,
        request_timeout=settings.LLAMA_REQUEST_TIMEOUT_SECONDS,
        retry_budget_seconds=settings.LLAMA_REQUEST_TIMEOUT_SECONDS,
    )
    inference = InferenceActivities(s3, llama, settings.box_name)
    return Registry(
        workflows=[ProcessWorkflow],
        activities=[inference.run_shard, inference.process_request],
        max_concurrent_activities=GPU_CONCURRENT_SHARDS + PROCESS_REQUESTS_ROOM,
        _llama=llama,
    )
