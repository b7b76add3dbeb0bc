"""The split and merge activities under ActivityEnvironment, over an in-memory bucket."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from minio.error import S3Error
from temporalio.testing import ActivityEnvironment

from kernel.inputs import MergeInput, SplitInput
from kernel.keys import invalid_lines_key, result_key, shard_key
from workers.activities import batch_io
from workers.activities.batch_io import BatchIOActivities


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, size: int) -> Any:
        for start in range(0, len(self.data), size):
            yield self.data[start : start + size]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class MemoryBucket:
    """get_object/put_object of the minio client, in memory; puts can be slowed down."""

    def __init__(self, put_delay: float = 0.0) -> None:
        self.objects: dict[str, bytes] = {}
        self.put_delay = put_delay

    def get_object(self, bucket: str, key: str) -> _Response:
        if key not in self.objects:
            raise S3Error(None, "NoSuchKey", "missing", key, "", "")  # type: ignore[arg-type]
        return _Response(self.objects[key])

    def put_object(self, bucket: str, key: str, data: Any, length: int, **_: Any) -> None:
        time.sleep(self.put_delay)
        self.objects[key] = data.read(length)

    def list_objects(self, bucket: str, prefix: str = "", recursive: bool = False) -> Any:
        return [
            SimpleNamespace(object_name=k) for k in sorted(self.objects) if k.startswith(prefix)
        ]


def split(bucket: MemoryBucket, payload: bytes, shard_size: int = 100) -> Any:
    bucket.objects["in"] = payload
    params = SplitInput(
        batch_id="b",
        bucket="x",
        input_key="in",
        endpoint="/v1/completions",
        defaults={},
        shard_size=shard_size,
    )
    return ActivityEnvironment().run(BatchIOActivities(bucket).split_input, params)  # type: ignore[arg-type]


def test_split_turns_every_nasty_line_into_an_error_line() -> None:
    lines = [
        b'{"custom_id": "a", "prompt": "x"}',
        b'{"custom_id": "\\ud800", "prompt": "x"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"custom_id": "n", "prompt": ' + b"1" * 5000 + b"}",
        b'{"custom_id": "b", "prompt": "\xff"}',
        b'{"custom_id": "a", "prompt": "dup"}',
        b'{"custom_id": "c", "prompt": "y"}',
    ]
    bucket = MemoryBucket()
    result = split(bucket, b"\n".join(lines))
    assert (result.total, result.valid, result.invalid) == (7, 2, 5)
    errors = [json.loads(x) for x in bucket.objects[invalid_lines_key("b")].splitlines()]
    assert [e["line"] for e in errors] == [2, 3, 4, 5, 6]
    shard = [json.loads(x) for x in bucket.objects[shard_key("b", 0)].splitlines()]
    assert [(r["line"], r["custom_id"]) for r in shard] == [(1, "a"), (7, "c")]


def test_a_shard_also_ends_at_max_shard_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_io, "MAX_SHARD_BYTES", 300)
    line = json.dumps({"custom_id": "{}", "prompt": "p" * 60})
    payload = "\n".join(line.replace("{}", str(i)) for i in range(20)).encode()
    bucket = MemoryBucket()
    result = split(bucket, payload, shard_size=1000)
    shards = [bucket.objects[shard_key("b", n)] for n in range(result.shard_count)]
    assert result.shard_count > 1
    assert all(len(shard) <= 300 for shard in shards)
    assert sum(len(shard.splitlines()) for shard in shards) == 20


def test_heartbeats_continue_while_an_s3_write_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_io, "HEARTBEAT_SECONDS", 0.05)
    bucket = MemoryBucket(put_delay=0.4)
    bucket.objects[result_key("b", 0)] = b'{"custom_id": "a", "error": null}\n'
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    params = MergeInput(
        batch_id="b", bucket="x", shard_count=1, status="completed", total=1, created_at=0
    )
    merged = env.run(BatchIOActivities(bucket).merge_results, params)  # type: ignore[arg-type]
    assert merged.completed == 1
    assert len(beats) >= 10, "the activity looked dead while S3 writes blocked"
    assert bucket.objects["batches/b/output.jsonl"] == b'{"custom_id": "a", "error": null}\n'


def test_missing_input_is_permanent() -> None:
    bucket = MemoryBucket()
    params = SplitInput(
        batch_id="b",
        bucket="x",
        input_key="nope",
        endpoint="/v1/completions",
        defaults={},
        shard_size=10,
    )
    with pytest.raises(Exception, match="does not exist"):
        ActivityEnvironment().run(BatchIOActivities(bucket).split_input, params)  # type: ignore[arg-type]
