"""GPU activities: run a shard (or one request) against the local llama-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Iterable
from typing import Any, BinaryIO, cast

from minio import Minio
from temporalio import activity
from temporalio.exceptions import ApplicationError

from kernel.contract import (
    ProcessInput,
    ProcessResult,
    ShardInput,
    ShardResult,
    result_key,
    shard_key,
)
from kernel.jsonl import iter_result_lines
from workers.llama import LlamaClient, LlamaUnavailable

HEARTBEAT_SECONDS = 1.0
READ_CHUNK_BYTES = 256 * 1024
SPOOL_BYTES = 8 << 20
PART_BYTES = 16 << 20
WRITE_RETRY_SECONDS = 600.0


def usage_of(lines: list[dict[str, Any]]) -> tuple[int, int]:
    """(prompt, completion) tokens summed over the answered lines' `usage`."""
    prompt = completion = 0
    for line in lines:
        body = (line.get("response") or {}).get("body")
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            prompt += int(usage.get("prompt_tokens") or 0)
            completion += int(usage.get("completion_tokens") or 0)
    return prompt, completion


async def _heartbeat_forever(progress: list[int]) -> None:
    """Heartbeats for the whole activity, S3 reads and writes included: a slow S3 delays a
    shard, it never times it out. A cancel requested by the workflow arrives in the answer
    to a heartbeat, so this pace (with the GPU worker's heartbeat throttle) bounds how long
    running requests go on after a cancel."""
    while True:
        activity.heartbeat(progress[0])
        await asyncio.sleep(HEARTBEAT_SECONDS)


def _cancelled_by_workflow() -> bool:
    """The workflow cancelled this shard (the batch is being cancelled), as opposed to the
    worker shutting down or the attempt timing out, after which the shard runs again."""
    details = activity.cancellation_details()
    return bool(
        details is not None
        and details.cancel_requested
        and not (details.worker_shutdown or details.timed_out or details.paused or details.reset)
    )


async def _first_failure(tasks: list[asyncio.Task[None]]) -> None:
    """Waits for every task; on the first failure cancels the others and raises it."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    failed = next((task for task in done if task.exception() is not None), None)
    if failed is None:
        return
    await _abandon(pending)
    error = failed.exception()
    assert error is not None
    if isinstance(error, LlamaUnavailable):
        raise ApplicationError(str(error), type="LlamaUnavailable") from None
    raise error


async def _abandon(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancels requests still running (closing their connections, so llama-server drops
    them) and waits until they are gone."""
    tasks = [task for task in tasks if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


class InferenceActivities:
    def __init__(self, s3: Minio, llama: LlamaClient, box: str) -> None:
        self.s3 = s3
        self.llama = llama
        self.box = box

    def _read_shard(self, bucket: str, key: str) -> list[dict[str, Any]]:
        """The shard's requests, parsed line by line as the object streams in."""
        response = self.s3.get_object(bucket, key)
        try:
            return [
                json.loads(line) for line in iter_result_lines(response.stream(READ_CHUNK_BYTES))
            ]
        finally:
            response.close()
            response.release_conn()

    def _write_results(self, bucket: str, key: str, lines: list[dict[str, Any]]) -> None:
        """One object at the shard's fixed key, spooled to disk past SPOOL_BYTES and sent
        in parts rather than joined into one bytes object."""
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
            for line in lines:
                spool.write(json.dumps(line).encode() + b"\n")
            size = spool.tell()
            spool.seek(0)
            self.s3.put_object(
                bucket,
                key,
                cast(BinaryIO, spool),
                size,
                content_type="application/x-ndjson",
                part_size=PART_BYTES,
            )

    async def _store(self, params: ShardInput, lines: list[dict[str, Any]]) -> None:
        """Writes the result object, retrying here while S3 is away: a failed activity
        would run the whole shard again on llama-server, and a cancelled one would lose its
        answers."""
        key = result_key(params.batch_id, params.shard)
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        delay = 1.0
        while True:
            try:
                await asyncio.to_thread(self._write_results, params.bucket, key, lines)
                return
            except Exception as exc:  # S3Error, urllib3's connection errors, OSError
                if time.monotonic() + delay > deadline:
                    raise
                activity.logger.warning("writing %s: %r; retrying in %.0fs", key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _finish(
        self, params: ShardInput, lines: list[dict[str, Any]], started: float
    ) -> ShardResult:
        """Writes the shard's result object once, at its fixed key, and sums it up. A cancel
        arriving meanwhile waits for the write: the answers are not thrown away."""
        gpu_seconds = time.monotonic() - started
        store = asyncio.create_task(self._store(params, lines))
        try:
            await asyncio.shield(store)
        except asyncio.CancelledError:
            await store
            if not _cancelled_by_workflow():
                raise
        failed = sum(1 for line in lines if line["error"] is not None)
        input_tokens, output_tokens = usage_of(lines)
        return ShardResult(
            shard=params.shard,
            completed=len(lines) - failed,
            failed=failed,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            gpu_seconds=gpu_seconds,
            box=self.box,
        )

    @activity.defn
    async def run_shard(self, params: ShardInput) -> ShardResult:
        """Runs every request of a shard at llama-server's slot concurrency.

        The result object is written once, whole, at the end: a retried shard rewrites it,
        so no line is ever duplicated. When the workflow cancels the shard (the batch is
        being cancelled), the requests still running are abandoned and the lines answered
        so far become the shard's result, written the same way; the activity then completes,
        so the shard is never retried after the cancel.
        """
        progress = [0]
        heartbeat = asyncio.create_task(_heartbeat_forever(progress))
        try:
            return await self._run_shard(params, progress)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _run_shard(self, params: ShardInput, progress: list[int]) -> ShardResult:
        requests = await asyncio.to_thread(
            self._read_shard, params.bucket, shard_key(params.batch_id, params.shard)
        )
        started = time.monotonic()
        answered: list[dict[str, Any] | None] = [None] * len(requests)

        async def run_one(index: int, request: dict[str, Any]) -> None:
            line = await self.llama.run(request["custom_id"], request["url"], request["body"])
            if line["error"] is not None:
                line["error"]["line"] = request["line"]
            answered[index] = line
            progress[0] += 1

        tasks = [asyncio.create_task(run_one(i, r)) for i, r in enumerate(requests)]
        try:
            await _first_failure(tasks)
        except asyncio.CancelledError:
            await _abandon(tasks)
            if not _cancelled_by_workflow():
                raise
            kept = [line for line in answered if line is not None]
            activity.logger.info(
                "batch %s shard %d cancelled: keeping the %d line(s) of %d answered so far",
                params.batch_id,
                params.shard,
                len(kept),
                len(requests),
            )
            return await self._finish(params, kept, started)
        return await self._finish(params, [line for line in answered if line is not None], started)

    @activity.defn
    async def process_request(self, params: ProcessInput) -> ProcessResult:
        request = params.request
        try:
            line = await self.llama.run(
                request["custom_id"], request["url"], request["body"], urgent=True
            )
        except LlamaUnavailable as exc:
            raise ApplicationError(str(exc), type="LlamaUnavailable") from exc
        return ProcessResult(output=line)
