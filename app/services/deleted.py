"""The record of a batch's deleted data (`kernel.keys.deleted_key`): which of its files were
deleted, and when. `DELETE /batch/{id}` records `batch` (everything); `DELETE /v1/files/{id}`
of a batch's output, error or input file records that one. The results routes answer 410
for what it names rather than serving the lines again from the shard results."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Literal

from minio import Minio

from kernel import storage
from kernel.keys import batch_file_id, deleted_key

DeletedKind = Literal["batch", "input", "output", "errors"]


def deleted_kinds(s3: Minio, bucket: str, batch_id: str) -> dict[str, int]:
    """What of the batch was deleted: kind -> epoch seconds; empty when nothing was."""
    raw = storage.read_bytes(s3, bucket, deleted_key(batch_id))
    if not raw:
        return {}
    try:
        record = json.loads(raw)
    except ValueError:
        return {"batch": 0}  # a damaged record still says the data was deleted
    return {str(k): int(v) for k, v in record.items()} if isinstance(record, dict) else {}


def record_deleted(s3: Minio, bucket: str, batch_id: str, kinds: Iterable[DeletedKind]) -> None:
    """Adds `kinds` to the batch's record, keeping the first time each was deleted."""
    record = deleted_kinds(s3, bucket, batch_id)
    now = int(time.time())
    for kind in kinds:
        record.setdefault(kind, now)
    payload = json.dumps(record, sort_keys=True).encode()
    storage.put_bytes(s3, bucket, deleted_key(batch_id), payload, content_type="application/json")


def deleted_message(batch_id: str, what: str, record: dict[str, int]) -> str | None:
    """Why the batch's `what` ("output", "errors") cannot be served, or None."""
    kind = "batch" if "batch" in record else what if what in record else None
    if kind is None:
        return None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record[kind]))
    if kind == "batch":
        return f"batch {batch_id}'s data was deleted at {when} (DELETE /batch/{batch_id})"
    return (
        f"batch {batch_id}'s {what} file was deleted at {when} "
        f"(DELETE /v1/files/{batch_file_id(batch_id, 'output' if what == 'output' else 'errors')})"
    )
