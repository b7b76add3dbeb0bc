"""GPU activities: run a shard (or one request) against the local llama-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from minio import Minio
from temporalio import activity
from temporalio.exceptions import ApplicationError

from kernel.inputs import ProcessInput, ProcessResult, ShardInput, ShardResult
from kernel.keys import parse_result_key, result_key, shard_key, shard_results_prefix
from kernel.storage import S3_FAILURES, list_objects, read_lines, write_jsonl
from workers.health import LlamaHealth, S3Gone
from workers.llama import LlamaClient, LlamaUnavailable

# How much of an S3 error's text a shard's failure carries.
MAX_FAILURE_TEXT = 500

HEARTBEAT_SECONDS = 1.0
WRITE_RETRY_SECONDS = 600.0
# The longest pause between two tries of a result write: a full disk or an S3 outage ends
# at an unknown moment, and the shard should go on within seconds of it (a try is one small
# object; the S3 client itself retries a 5xx for about 15 s before this counts a failure).
WRITE_RETRY_MAX_DELAY = 5.0
# A shard handed over because llama-server is gone: how long it tries to store the lines it
# answered (S3 away too: they are answered again elsewhere rather than holding the shard),
# and how soon Temporal offers it again, whatever its attempt (no growing backoff).
HANDOVER_WRITE_SECONDS = 30.0
HANDOVER_RETRY_DELAY = timedelta(seconds=1)


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
    def __init__(
        self,
        s3: Minio,
        llama: LlamaClient,
        box: str,
        health: LlamaHealth | None = None,
        price_per_hour: float = 0.0,
    ) -> None:
        self.s3 = s3
        self.llama = llama
        self.box = box
        # The box's own price (BOX_PRICE_PER_HOUR), reported with each shard it runs.
        self.price_per_hour = price_per_hour
        # The hand-over is off unless the box's health (the one the llama client feeds) is given.
        self.health = health or LlamaHealth(0.0)

    def _read_shard(self, bucket: str, key: str) -> list[dict[str, Any]]:
        """The shard's requests, parsed line by line as the object streams in."""
        return [json.loads(line) for line in read_lines(self.s3, bucket, key)]

    def _earlier_answers(self, params: ShardInput) -> tuple[dict[str, dict[str, Any]], int]:
        """The lines earlier attempts of this shard stored (a shard handed over keeps what it
        answered; one cut off may have written everything), by custom_id, and the latest
        attempt that stored any (0: none)."""
        attempts: list[tuple[int, str]] = []
        prefix = shard_results_prefix(params.batch_id, params.shard)
        for item in list_objects(self.s3, params.bucket, prefix):
            key = item.object_name or ""
            parsed = parse_result_key(params.batch_id, key)
            if parsed is not None and parsed[0] == params.shard:
                attempts.append((parsed[1], key))
        answers: dict[str, dict[str, Any]] = {}
        for _, key in sorted(attempts, reverse=True):
            for line in self._read_shard(params.bucket, key):
                answers.setdefault(line["custom_id"], line)
        return answers, max((attempt for attempt, _ in attempts), default=0)

    async def _store(
        self,
        bucket: str,
        key: str,
        lines: list[dict[str, Any]],
        budget: float = WRITE_RETRY_SECONDS,
    ) -> None:
        """Writes the result object, retrying here while S3 is away: a failed activity
        would run the whole shard again on llama-server, and a cancelled one would lose its
        answers."""
        deadline = time.monotonic() + budget
        delay = 1.0
        while True:
            try:
                await self.health.s3_call(write_jsonl, self.s3, bucket, key, lines)
                return
            except S3Gone:
                raise
            except Exception as exc:  # S3Error, urllib3's connection errors, OSError
                if time.monotonic() + delay > deadline:
                    raise
                activity.logger.warning("writing %s: %r; retrying in %.0fs", key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_DELAY)

    def _summary(
        self, params: ShardInput, lines: list[dict[str, Any]], started: float
    ) -> ShardResult:
        failed = sum(1 for line in lines if line["error"] is not None)
        input_tokens, output_tokens = usage_of(lines)
        return ShardResult(
            shard=params.shard,
            completed=len(lines) - failed,
            failed=failed,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            gpu_seconds=time.monotonic() - started,
            box=self.box,
            price_per_hour=self.price_per_hour,
        )

    async def _finish(
        self, params: ShardInput, key: str, lines: list[dict[str, Any]], started: float
    ) -> ShardResult:
        """Writes the shard's result object once, at its attempt's key, and sums it up. A
        cancel arriving meanwhile waits for the write: the answers are not thrown away."""
        summary = self._summary(params, lines, started)
        store = asyncio.create_task(self._store(params.bucket, key, lines))
        try:
            await asyncio.shield(store)
        except asyncio.CancelledError:
            await store
            if not _cancelled_by_workflow():
                raise
        return summary

    def _gone(self, params: ShardInput, kept: str) -> ApplicationError:
        """The retryable failure that gives a shard back while llama-server is gone."""
        return ApplicationError(
            f"box {self.box}: {self.health.describe()}; shard {params.shard} handed over "
            f"to another box, {kept}",
            type=self.health.cause,
            next_retry_delay=HANDOVER_RETRY_DELAY,
        )

    @activity.defn
    async def run_shard(self, params: ShardInput) -> ShardResult:
        """Runs every request of a shard at llama-server's slot concurrency.

        The result object is written once, whole, at the end, at the attempt's own key (see
        `result_key`): a retried shard writes a new one, an attempt cut off that writes late
        cannot replace the latest, and no line is ever duplicated. When the workflow cancels
        the shard (the batch is being cancelled), the requests still running are abandoned
        and the lines answered so far become the shard's result, written the same way; the
        activity then completes, so the shard is never retried after the cancel.

        When this box's llama-server has answered nothing for LLAMA_DOWN_HANDOVER_SECONDS,
        the shard is handed over: the running requests are abandoned, the lines answered so
        far are stored the same way, and the activity fails retryably for another box to
        run the rest (an attempt starts from what earlier attempts stored).
        """
        progress = [0]
        heartbeat = asyncio.create_task(_heartbeat_forever(progress))
        try:
            return await self._run_shard(params, progress)
        except S3Gone:  # S3 away for the hand-over time: another box runs the shard
            raise self._gone(params, "what it answered not stored") from None
        except S3_FAILURES as exc:
            # The client's own retries are spent. A short failure, not the client's chain of
            # tracebacks: Temporal keeps at most 4 KB of an activity's last failure and
            # replaces a longer one with "Failure exceeds size limit".
            raise ApplicationError(
                f"box {self.box}: batch {params.batch_id} shard {params.shard}: S3 failed: "
                f"{type(exc).__name__}: {str(exc)[:MAX_FAILURE_TEXT]}",
                type="S3Failed",
            ) from None
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _run_shard(self, params: ShardInput, progress: list[int]) -> ShardResult:
        if self.health.gone:  # brought in by a poll made before llama-server went
            raise self._gone(params, "nothing answered here")
        requests, (earlier, latest) = await asyncio.gather(
            self.health.s3_call(
                self._read_shard, params.bucket, shard_key(params.batch_id, params.shard)
            ),
            self.health.s3_call(self._earlier_answers, params),
        )
        # The attempt's key; after a workflow reset (attempts counted from 1 again) it still
        # comes after every object stored before.
        attempt = activity.info().attempt
        key = result_key(params.batch_id, params.shard, max(attempt, latest + 1))
        started = time.monotonic()
        answered: list[dict[str, Any] | None] = [earlier.get(r["custom_id"]) for r in requests]
        inherited = [line for line in answered if line is not None]
        progress[0] = len(inherited)
        if inherited:
            activity.logger.info(
                "batch %s shard %d attempt %d: %d of %d line(s) answered by earlier attempts",
                params.batch_id,
                params.shard,
                attempt,
                len(inherited),
                len(requests),
            )

        async def run_one(index: int, request: dict[str, Any]) -> None:
            line = await self.llama.run(request["custom_id"], request["url"], request["body"])
            if line["error"] is not None:
                line["error"]["line"] = request["line"]
            answered[index] = line
            progress[0] += 1

        tasks = [
            asyncio.create_task(run_one(i, r))
            for i, r in enumerate(requests)
            if answered[i] is None
        ]
        try:
            all_answered = await self._answer(tasks)
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
            return await self._finish(params, key, kept, started)
        kept = [line for line in answered if line is not None]
        if all_answered:
            return await self._finish(params, key, kept, started)
        return await self._hand_over(params, key, kept, inherited, len(requests), started)

    async def _answer(self, tasks: list[asyncio.Task[None]]) -> bool:
        """Waits for every request: True when all are answered, False when llama-server is
        gone first (the requests still running are abandoned)."""
        requests = asyncio.ensure_future(_first_failure(tasks))
        if self.health.handover_seconds <= 0:
            await requests
            return True
        gone = asyncio.ensure_future(self.health.wait_gone())
        try:
            await asyncio.wait({requests, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (requests, gone):
                waiter.cancel()
            await asyncio.wait({requests, gone})
        if not requests.cancelled():
            requests.result()  # the first request that failed for good, if any
            return True
        await _abandon(tasks)
        return False

    async def _hand_over(
        self,
        params: ShardInput,
        key: str,
        kept: list[dict[str, Any]],
        inherited: list[dict[str, Any]],
        total: int,
        started: float,
    ) -> ShardResult:
        """Stores the lines answered so far and gives the shard back (a retryable failure);
        a cancel of the batch arriving meanwhile completes it with them instead."""
        stored = len(inherited)
        if len(kept) > len(inherited):
            store = asyncio.create_task(
                self._store(params.bucket, key, kept, budget=HANDOVER_WRITE_SECONDS)
            )
            try:
                await asyncio.shield(store)
                stored = len(kept)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await store
                if not _cancelled_by_workflow():
                    raise
                # What is stored for this shard: these lines, or the earlier attempts' only.
                written = store.done() and not store.cancelled() and store.exception() is None
                return self._summary(params, kept if written else inherited, started)
            except Exception as exc:
                activity.logger.warning(
                    "batch %s shard %d: could not keep its %d answered line(s): %r",
                    params.batch_id,
                    params.shard,
                    len(kept) - len(inherited),
                    exc,
                )
        error = self._gone(params, f"{stored} of {total} line(s) kept")
        activity.logger.warning("batch %s: %s", params.batch_id, error)
        raise error

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
