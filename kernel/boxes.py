"""Reading the GPU boxes' records from the bucket (the API's `/queues` and the capacity
activity both read them this way).

Liveness is judged by the object's Last-Modified, set by the S3 server, so a box whose clock
is off is still judged right; `last_seen` is that time too.
"""

from __future__ import annotations

import json
import time

from minio import Minio
from pydantic import BaseModel, ConfigDict, Field

from kernel.keys import BOXES_PREFIX
from kernel.storage import list_objects, read_bytes

# The fleet: each GPU worker publishes its box record every BOX_REPORT_SECONDS; a record
# whose object is older than BOX_LIVE_SECONDS is a box that is gone.
BOX_REPORT_SECONDS = 5.0
BOX_LIVE_SECONDS = 20.0


class BoxRecord(BaseModel):
    """What one GPU worker says about its box (written by the worker, read by the API and
    the capacity activity)."""

    model_config = ConfigDict(extra="ignore")

    box: str
    task_queue: str = ""
    slots: int = Field(default=0, description="llama-server's total_slots; 0 while it is down.")
    shard_room: int = Field(default=0, description="Shard activities the worker runs at once.")
    in_flight: int = Field(default=0, description="Requests sent to llama-server, not answered.")
    requests_per_s: float = 0.0
    tokens_per_s: float = Field(default=0.0, description="Generated (completion) tokens/s.")
    requests_total: int = 0
    price_per_hour: float = Field(
        default=0.0,
        description="USD per hour the box is rented at (BOX_PRICE_PER_HOUR); 0 unknown.",
    )
    last_seen: float = Field(default=0.0, description="Unix time the record was written.")
    live: bool = Field(default=True, description="Written within the last BOX_LIVE_SECONDS.")

    def shards_wanted(self, shard_size: int) -> int:
        """Shards that keep this box's slots busy: enough to fill them, plus one whose
        requests take over the slots of a shard that is finishing; never more than the
        worker runs at once. A box whose llama-server is down wants none."""
        if self.slots <= 0 or not self.live:
            return 0
        wanted = -(-self.slots // max(shard_size, 1)) + 1
        return min(wanted, self.shard_room) if self.shard_room > 0 else wanted


def read_boxes(
    s3: Minio, bucket: str, task_queue: str | None = None, now: float | None = None
) -> list[BoxRecord]:
    """Every box record in the bucket (of `task_queue` when given), by name."""
    now = time.time() if now is None else now
    records: list[BoxRecord] = []
    for item in list_objects(s3, bucket, BOXES_PREFIX):
        if item.object_name is None or not item.object_name.endswith(".json"):
            continue
        payload = read_bytes(s3, bucket, item.object_name)
        if payload is None:
            continue  # removed since the listing
        try:
            record = BoxRecord.model_validate(json.loads(payload))
        except ValueError:
            continue  # not a record this version reads: the next report replaces it
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
