"""CPU activities: validate and split a batch's input into shards, merge shard results.

Both stream: neither the input nor the output is ever held whole in memory. Both are
idempotent (same objects rewritten on a retry), so a killed worker only delays a batch.
They are synchronous and run in the worker's thread pool, heartbeating as they go.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from typing import IO, Any, BinaryIO, cast

from minio import Minio
from minio.error import S3Error
from temporalio import activity
from temporalio.exceptions import ApplicationError

from kernel.contract import (
    MAX_LINE_BYTES,
    MergeInput,
    MergeResult,
    SplitInput,
    SplitResult,
    errors_key,
    invalid_lines_key,
    output_key,
    shard_key,
    summary_key,
)
from kernel.jsonl import TooLong, iter_lines
from kernel.lines import LineError, parse_line
from kernel.results import READ_CHUNK_BYTES, ShardResults

SPOOL_BYTES = 16 << 20
HEARTBEAT_SECONDS = 2.0


def _put(client: Minio, bucket: str, key: str, data: IO[bytes], size: int) -> None:
    data.seek(0)
    client.put_object(
        bucket,
        key,
        cast(BinaryIO, data),
        length=size,
        content_type="application/x-ndjson",
        part_size=16 << 20,
    )


def _put_bytes(client: Minio, bucket: str, key: str, payload: bytes) -> None:
    _put(client, bucket, key, io.BytesIO(payload), len(payload))


def _open(client: Minio, bucket: str, key: str) -> Any:
    try:
        return client.get_object(bucket, key)
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            raise ApplicationError(
                f"input object {key!r} does not exist in bucket {bucket!r}",
                type="InputNotFound",
                non_retryable=True,
            ) from None
        raise


class _Heartbeat:
    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, *details: Any) -> None:
        now = time.monotonic()
        if now - self._last >= HEARTBEAT_SECONDS:
            activity.heartbeat(*details)
            self._last = now


def invalid_line(line_no: int, custom_id: str | None, message: str) -> dict[str, Any]:
    return {
        "id": None,
        "custom_id": custom_id,
        "line": line_no,
        "response": None,
        "error": {"code": "invalid_request_line", "message": f"line {line_no}: {message}"},
    }


class BatchIOActivities:
    def __init__(self, s3: Minio) -> None:
        self.s3 = s3

    @activity.defn
    def split_input(self, params: SplitInput) -> SplitResult:
        heartbeat = _Heartbeat()
        response = _open(self.s3, params.bucket, params.input_key)
        first_seen: dict[bytes, int] = {}
        shard_lines: list[bytes] = []
        shard_count = total = invalid = 0
        first_error = ""

        def flush_shard() -> None:
            nonlocal shard_count
            _put_bytes(
                self.s3,
                params.bucket,
                shard_key(params.batch_id, shard_count),
                b"".join(shard_lines),
            )
            shard_lines.clear()
            shard_count += 1

        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as invalid_file:
            try:
                for line_no, raw in enumerate(
                    iter_lines(response.stream(READ_CHUNK_BYTES), MAX_LINE_BYTES), start=1
                ):
                    if isinstance(raw, bytes) and not raw.strip():
                        continue
                    total += 1
                    custom_id: str | None = None
                    try:
                        if isinstance(raw, TooLong):
                            raise LineError(
                                f"line is {raw.size} bytes; the limit is {MAX_LINE_BYTES}"
                            )
                        request = parse_line(raw, params.endpoint, params.defaults)
                        custom_id = request["custom_id"]
                        digest = hashlib.blake2b(custom_id.encode(), digest_size=12).digest()
                        if digest in first_seen:
                            raise LineError(
                                f"duplicate custom_id {custom_id!r} "
                                f"(first used on line {first_seen[digest]})",
                                custom_id,
                            )
                        first_seen[digest] = line_no
                    except LineError as exc:
                        invalid += 1
                        message = str(exc)
                        first_error = first_error or f"line {line_no}: {message}"
                        record = invalid_line(line_no, exc.custom_id or custom_id, message)
                        invalid_file.write(json.dumps(record).encode() + b"\n")
                        continue
                    shard_lines.append(json.dumps({"line": line_no, **request}).encode() + b"\n")
                    if len(shard_lines) >= params.shard_size:
                        flush_shard()
                    heartbeat(line_no)
            finally:
                response.close()
                response.release_conn()
            if shard_lines:
                flush_shard()
            _put(
                self.s3,
                params.bucket,
                invalid_lines_key(params.batch_id),
                invalid_file,
                invalid_file.tell(),
            )
        activity.logger.info(
            "batch %s: %d line(s), %d invalid, %d shard(s)",
            params.batch_id,
            total,
            invalid,
            shard_count,
        )
        return SplitResult(
            total=total,
            valid=total - invalid,
            invalid=invalid,
            shard_count=shard_count,
            first_error=first_error,
        )

    @activity.defn
    def merge_results(self, params: MergeInput) -> MergeResult:
        """Writes output.jsonl and errors.jsonl from the shard results, in shard order."""
        heartbeat = _Heartbeat()
        completed = failed = 0
        results = ShardResults(self.s3, params.bucket, params.batch_id)
        with (
            tempfile.SpooledTemporaryFile(SPOOL_BYTES) as out,
            tempfile.SpooledTemporaryFile(SPOOL_BYTES) as err,
        ):
            for success, line in results.lines(params.shard_count, on_shard=heartbeat):
                if success:
                    out.write(line + b"\n")
                    completed += 1
                else:
                    err.write(line + b"\n")
                    failed += 1
            _put(self.s3, params.bucket, output_key(params.batch_id), out, out.tell())
            _put(self.s3, params.bucket, errors_key(params.batch_id), err, err.tell())
        summary = {
            "id": params.batch_id,
            "status": params.status,
            "request_counts": {"total": params.total, "completed": completed, "failed": failed},
            "created_at": params.created_at,
            "completed_at": int(time.time()),
            "output_key": output_key(params.batch_id),
            "error_key": errors_key(params.batch_id),
        }
        _put_bytes(
            self.s3,
            params.bucket,
            summary_key(params.batch_id),
            json.dumps(summary, indent=2).encode(),
        )
        activity.logger.info(
            "batch %s merged: %d completed, %d failed", params.batch_id, completed, failed
        )
        return MergeResult(
            completed=completed,
            failed=failed,
            output_key=output_key(params.batch_id),
            error_key=errors_key(params.batch_id),
        )
