"""CPU activities: validate and split a batch's input into shards, merge shard results.

Both stream: neither the input, a shard nor the output is ever held whole in memory
(shards and outputs go through `kernel.storage.JsonlSpool`: spooled to a temporary file and
uploaded in parts). Both are idempotent (same objects rewritten on a retry), so a killed
worker only delays a batch. They are synchronous and run in the worker's thread pool; a
keep-alive thread heartbeats through every S3 read and write, even one the client is
retrying while S3 is away, so only a dead worker misses its heartbeat.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from minio import Minio
from minio.error import S3Error
from temporalio import activity
from temporalio.exceptions import ApplicationError

from kernel.endpoints import MAX_LINE_BYTES
from kernel.inputs import MAX_SHARD_BYTES, MergeInput, MergeResult, SplitInput, SplitResult
from kernel.jsonl import TooLong, iter_lines
from kernel.keys import errors_key, invalid_lines_key, output_key, shard_key, summary_key
from kernel.lines import LineError, parse_line
from kernel.results import ShardResults, unfinished_error, unfinished_line
from kernel.storage import (
    JsonlSpool,
    ObjectStream,
    is_missing,
    put_bytes,
    read_lines,
    stream_object,
)

HEARTBEAT_SECONDS = 2.0


def _open(client: Minio, bucket: str, key: str) -> ObjectStream:
    try:
        return stream_object(client, bucket, key)
    except S3Error as exc:
        if is_missing(exc):
            raise ApplicationError(
                f"input object {key!r} does not exist in bucket {bucket!r}",
                type="InputNotFound",
                non_retryable=True,
            ) from None
        raise


class _Heartbeat:
    """Records the latest progress; `keep_alive` sends it every HEARTBEAT_SECONDS."""

    def __init__(self) -> None:
        self.details: tuple[Any, ...] = ()

    def __call__(self, *details: Any) -> None:
        self.details = details


@contextmanager
def keep_alive(heartbeat: _Heartbeat) -> Iterator[None]:
    """Heartbeats from a side thread for as long as the block runs, so that a blocking S3
    call (a large part, or the client retrying while S3 is away) never looks like a dead
    worker. A killed worker stops heartbeating and its activity is retried elsewhere."""
    stop = threading.Event()
    context = contextvars.copy_context()  # the activity's context, for activity.heartbeat

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                context.run(activity.heartbeat, *heartbeat.details)
            except Exception:  # the worker is shutting down: the activity ends anyway
                return

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def invalid_line(line_no: int, custom_id: str | None, message: str) -> dict[str, Any]:
    return {
        "id": None,
        "custom_id": custom_id,
        "line": line_no,
        "response": None,
        "error": {"code": "invalid_request_line", "message": f"line {line_no}: {message}"},
    }


def _custom_id_of(raw: bytes | TooLong) -> str | None:
    """The custom_id a raw input line names, if it names a string one."""
    if isinstance(raw, TooLong):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    custom_id = value.get("custom_id") if isinstance(value, dict) else None
    return custom_id if isinstance(custom_id, str) else None


class BatchIOActivities:
    def __init__(self, s3: Minio) -> None:
        self.s3 = s3

    @activity.defn
    def split_input(self, params: SplitInput) -> SplitResult:
        heartbeat = _Heartbeat()
        with keep_alive(heartbeat):
            return self._split(params, heartbeat)

    def _split(self, params: SplitInput, heartbeat: _Heartbeat) -> SplitResult:
        first_seen: dict[bytes, int] = {}
        shard_count = total = invalid = 0
        shard_lines = 0
        first_error = ""

        with (
            _open(self.s3, params.bucket, params.input_key) as chunks,
            JsonlSpool(self.s3, params.bucket) as invalid_file,
            JsonlSpool(self.s3, params.bucket) as shard_file,
        ):

            def flush_shard() -> None:
                nonlocal shard_count, shard_lines
                shard_file.upload(shard_key(params.batch_id, shard_count))
                shard_count += 1
                shard_lines = 0

            for line_no, raw in enumerate(iter_lines(chunks, MAX_LINE_BYTES), start=1):
                if isinstance(raw, bytes) and not raw.strip():
                    continue
                total += 1
                heartbeat(line_no)
                try:
                    encoded, custom_id = self._check_line(raw, params, line_no, first_seen)
                except LineError as exc:
                    invalid += 1
                    message = str(exc)
                    first_error = first_error or f"line {line_no}: {message}"
                    invalid_file.write_json(invalid_line(line_no, exc.custom_id, message))
                    continue
                if shard_lines and shard_file.size + len(encoded) > MAX_SHARD_BYTES:
                    flush_shard()
                shard_file.write(encoded)
                shard_lines += 1
                if shard_lines >= params.shard_size:
                    flush_shard()
            if shard_lines:
                flush_shard()
            invalid_file.upload(invalid_lines_key(params.batch_id))
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

    @staticmethod
    def _check_line(
        raw: bytes | TooLong, params: SplitInput, line_no: int, first_seen: dict[bytes, int]
    ) -> tuple[bytes, str]:
        """(shard line, custom_id) of a valid line; LineError with the reason otherwise."""
        if isinstance(raw, TooLong):
            raise LineError(f"line is {raw.size} bytes; the limit is {MAX_LINE_BYTES}")
        try:
            request = parse_line(raw, params.endpoint, params.defaults)
        except LineError:
            raise
        except Exception as exc:  # a parser bug must not wedge the batch: report the line
            activity.logger.exception("batch %s line %d", params.batch_id, line_no)
            raise LineError(f"could not be read ({type(exc).__name__})") from None
        custom_id: str = request["custom_id"]
        digest = hashlib.blake2b(custom_id.encode(), digest_size=12).digest()
        if digest in first_seen:
            raise LineError(
                f"duplicate custom_id {custom_id!r} (first used on line {first_seen[digest]})",
                custom_id,
            )
        first_seen[digest] = line_no
        return json.dumps({"line": line_no, **request}).encode() + b"\n", custom_id

    @activity.defn
    def merge_results(self, params: MergeInput) -> MergeResult:
        """Writes output.jsonl and errors.jsonl from the shard results, in shard order."""
        heartbeat = _Heartbeat()
        with keep_alive(heartbeat):
            return self._merge(params, heartbeat)

    def _merge(self, params: MergeInput, heartbeat: _Heartbeat) -> MergeResult:
        """The invalid input lines, then each shard's result lines, in shard order; after a
        batch that did not run every request, each shard's request lines without an answer
        follow its results as error lines (kernel.results.UNFINISHED_ERRORS), read from the
        shard's input object. Memory: one shard's custom_ids at most."""
        completed = failed = unfinished = 0
        results = ShardResults(self.s3, params.bucket, params.batch_id)
        never_ran = unfinished_error(params.end_reason, params.status)

        def lines(key: str) -> Iterator[bytes]:
            return read_lines(self.s3, params.bucket, key, missing_ok=True)

        if params.unsplit_input_key and never_ran is not None:
            return self._merge_unsplit(params, never_ran, heartbeat)
        with JsonlSpool(self.s3, params.bucket) as out, JsonlSpool(self.s3, params.bucket) as err:
            for line in lines(invalid_lines_key(params.batch_id)):
                err.write(line + b"\n")
                failed += 1
            keys = results.result_keys() if params.shard_count else {}
            for shard in range(params.shard_count):
                answered: set[str] = set()
                for line in lines(keys[shard]) if shard in keys else ():
                    record = json.loads(line)
                    if never_ran is not None:
                        answered.add(record.get("custom_id"))
                    if record.get("error") is None:
                        out.write(line + b"\n")
                        completed += 1
                    else:
                        err.write(line + b"\n")
                        failed += 1
                if never_ran is not None:
                    for line in lines(shard_key(params.batch_id, shard)):
                        request = json.loads(line)
                        if request["custom_id"] in answered:
                            continue
                        record = unfinished_line(request["line"], request["custom_id"], *never_ran)
                        err.write(json.dumps(record).encode() + b"\n")
                        unfinished += 1
                heartbeat(shard)
            failed += unfinished
            out.upload(output_key(params.batch_id))
            err.upload(errors_key(params.batch_id))
        self._write_summary(params, params.total, completed, failed)
        activity.logger.info(
            "batch %s merged: %d completed, %d failed (%d never ran)",
            params.batch_id,
            completed,
            failed,
            unfinished,
        )
        return MergeResult(
            completed=completed,
            failed=failed,
            output_key=output_key(params.batch_id),
            error_key=errors_key(params.batch_id),
        )

    def _merge_unsplit(
        self, params: MergeInput, never_ran: tuple[str, str], heartbeat: _Heartbeat
    ) -> MergeResult:
        """A batch that ended before its input was split (cancelled while validating): each
        input line is an error line with the ending's code, its custom_id as far as the line
        gives one (the split never checked it). Streams the input; constant memory."""
        total = 0
        with JsonlSpool(self.s3, params.bucket) as out, JsonlSpool(self.s3, params.bucket) as err:
            try:
                chunks = stream_object(self.s3, params.bucket, params.unsplit_input_key)
            except S3Error as exc:
                if not is_missing(exc):
                    raise
            else:
                with chunks:
                    for line_no, raw in enumerate(iter_lines(chunks, MAX_LINE_BYTES), start=1):
                        if isinstance(raw, bytes) and not raw.strip():
                            continue
                        total += 1
                        heartbeat(line_no)
                        record = unfinished_line(line_no, _custom_id_of(raw), *never_ran)
                        err.write(json.dumps(record).encode() + b"\n")
            out.upload(output_key(params.batch_id))
            err.upload(errors_key(params.batch_id))
        self._write_summary(params, total, 0, total)
        activity.logger.info(
            "batch %s ended before its split: %d line(s), each %s",
            params.batch_id,
            total,
            never_ran[0],
        )
        return MergeResult(
            completed=0,
            failed=total,
            output_key=output_key(params.batch_id),
            error_key=errors_key(params.batch_id),
            total=total,
        )

    def _write_summary(self, params: MergeInput, total: int, completed: int, failed: int) -> None:
        summary = {
            "id": params.batch_id,
            "status": params.status,
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "created_at": params.created_at,
            "completed_at": int(time.time()),
            "output_key": output_key(params.batch_id),
            "error_key": errors_key(params.batch_id),
        }
        put_bytes(
            self.s3,
            params.bucket,
            summary_key(params.batch_id),
            json.dumps(summary, indent=2).encode(),
            content_type="application/json",
        )
