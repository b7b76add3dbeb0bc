"""Reading the GPU boxes' records from the bucket (the API's `/queues` and the capacity
activity both read them this way).

Liveness is judged by the object's Last-Modified, set by the S3 server, so a box whose clock
is off is still judged right; `last_seen` is that time too.
"""

from __future__ import annotations

import json
import time

from minio import Minio
from minio.error import S3Error

from kernel.contract import BOX_LIVE_SECONDS, BOXES_PREFIX, BoxRecord


def read_boxes(
    s3: Minio, bucket: str, task_queue: str | None = None, now: float | None = None
) -> list[BoxRecord]:
    """Every box record in the bucket (of `task_queue` when given), by name."""
    now = time.time() if now is None else now
    records: list[BoxRecord] = []
    for item in s3.list_objects(bucket, prefix=BOXES_PREFIX):
        if item.object_name is None or not item.object_name.endswith(".json"):
            continue
        try:
            response = s3.get_object(bucket, item.object_name)
            try:
                record = BoxRecord.model_validate(json.loads(response.read()))
            finally:
                response.close()
                response.release_conn()
        except (S3Error, ValueError):
            continue  # removed or half-written in between: the next read sees it
        if task_queue is not None and record.task_queue != task_queue:
            continue
        seen = item.last_modified.timestamp() if item.last_modified else record.last_seen
        record.last_seen = round(seen, 3)
        record.live = now - seen <= BOX_LIVE_SECONDS
        records.append(record)
    return sorted(records, key=lambda r: r.box)


def shards_for(records: list[BoxRecord], shard_size: int) -> int:
    """Shards in flight that keep every live box busy."""
    return sum(record.shards_wanted(shard_size) for record in records)
