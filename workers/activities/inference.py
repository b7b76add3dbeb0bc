"""GPU activities: run a shard (or one request) against the local llama-server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from typing import Any

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
from workers.llama import LlamaClient, LlamaUnavailable

HEARTBEAT_SECONDS = 2.0


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
    while True:
        activity.heartbeat(progress[0])
        await asyncio.sleep(HEARTBEAT_SECONDS)


class InferenceActivities:
    def __init__(self, s3: Minio, llama: LlamaClient, box: str) -> None:
        self.s3 = s3
        self.llama = llama
        self.box = box

    def _read_shard(self, bucket: str, key: str) -> list[dict[str, Any]]:
        response = self.s3.get_object(bucket, key)
        try:
            return [json.loads(line) for line in response.read().splitlines() if line.strip()]
        finally:
            response.close()
            response.release_conn()

    def _write_results(self, bucket: str, key: str, lines: list[dict[str, Any]]) -> None:
        payload = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        self.s3.put_object(
            bucket, key, io.BytesIO(payload), len(payload), content_type="application/x-ndjson"
        )

    @activity.defn
    async def run_shard(self, params: ShardInput) -> ShardResult:
        """Runs every request of a shard at llama-server's slot concurrency.

        The result object is written once, whole, at the end: a retried shard rewrites it,
        so no line is ever duplicated.
        """
        requests = await asyncio.to_thread(
            self._read_shard, params.bucket, shard_key(params.batch_id, params.shard)
        )
        progress = [0]
        started = time.monotonic()
        heartbeat = asyncio.create_task(_heartbeat_forever(progress))

        async def run_one(request: dict[str, Any]) -> dict[str, Any]:
            line = await self.llama.run(request["custom_id"], request["url"], request["body"])
            if line["error"] is not None:
                line["error"]["line"] = request["line"]
            progress[0] += 1
            return line

        try:
            # A TaskGroup cancels the other requests as soon as one gives up.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(run_one(request)) for request in requests]
        except BaseExceptionGroup as failures:
            unavailable = failures.subgroup(LlamaUnavailable)
            if unavailable is None:
                raise
            raise ApplicationError(
                str(unavailable.exceptions[0]), type="LlamaUnavailable"
            ) from None
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        gpu_seconds = time.monotonic() - started
        lines = [task.result() for task in tasks]
        await asyncio.to_thread(
            self._write_results, params.bucket, result_key(params.batch_id, params.shard), lines
        )
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
    async def process_request(self, params: ProcessInput) -> ProcessResult:
        request = params.request
        try:
            line = await self.llama.run(
                request["custom_id"], request["url"], request["body"], urgent=True
            )
        except LlamaUnavailable as exc:
            raise ApplicationError(str(exc), type="LlamaUnavailable") from exc
        return ProcessResult(output=line)
