"""The fleet's live GPU capacity, read from the boxes' records (a CPU activity the batch
workflow runs as a local activity each time it sizes its window)."""

from __future__ import annotations

from minio import Minio
from temporalio import activity

from kernel.boxes import read_boxes, shards_for
from kernel.inputs import CapacityInput, CapacityResult


class CapacityActivities:
    def __init__(self, s3: Minio) -> None:
        self.s3 = s3

    @activity.defn
    def live_capacity(self, params: CapacityInput) -> CapacityResult:
        boxes = [
            box
            for box in read_boxes(self.s3, params.bucket, params.gpu_task_queue)
            if box.live and box.slots > 0
        ]
        return CapacityResult(
            shards=shards_for(boxes, params.shard_size),
            boxes=len(boxes),
            slots=sum(box.slots for box in boxes),
        )
