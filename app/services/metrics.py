"""Prometheus metrics of the API (`GET /metrics`).

Two kinds, in one registry per API process:

* Counted as they happen in this process: HTTP request latency per route (the synchronous
  `/process` and `/v1/*` paths included) and worker programs started on demand.
* Gathered at scrape time from Temporal: batches by status (every state of
  `kernel.lifecycle` a label, read from each batch's published status, so a budget stop
  counts as `cancelled` and an expiry as `expired`), backlog and live pollers per task
  queue, and the batches' requests, tokens and GPU seconds. Those totals are counters:
  the first scrape of an API process starts them from the totals every batch in Temporal's
  retention stored, then each scrape adds the growth of each batch's published counts
  (running batches, and batches closed since the previous scrape). A restarted API thus
  answers the same totals as before it, and Prometheus' `rate()` and `increase()` see no
  jump.

Shard durations come from the GPU worker's own Temporal SDK metrics
(`temporal_activity_execution_latency_seconds{activity_type="run_shard"}` on
WORKER_GPU_METRICS_PORT); the API publishes the GPU seconds the finished shards used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from temporalio.client import WorkflowExecution, WorkflowExecutionStatus

from app.services.batches import batch_status
from app.services.queues import queue_states
from app.services.temporal import TemporalService
from kernel.config import Settings
from kernel.inputs import BATCH_WORKFLOW
from kernel.lifecycle import ALL_STATES, is_final
from kernel.status import BatchStatus
from kernel.supervisor import StartResult, SupervisorControl

logger = logging.getLogger(__name__)

PREFIX = "llm_batch"
BATCH_STATES = ALL_STATES
# Closed batches are looked for back to the previous scrape, plus this margin.
CLOSED_MARGIN = timedelta(seconds=30)
# Running batches read per scrape at most (each is one memo in the list answer).
MAX_RUNNING_BATCHES = 1000
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class _Seen:
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    gpu_seconds: float = 0.0


class Metrics:
    """The API's metrics registry and the scrape-time collection from Temporal."""

    def __init__(self, settings: Settings, temporal: TemporalService) -> None:
        self.settings = settings
        self.temporal = temporal
        disable_created_metrics()  # no `_created` series next to every counter
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an API request, by route template, method and status code "
            "(the synchronous /process and /v1 requests included).",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.workers_started = Counter(
            f"{PREFIX}_workers_started",
            "Worker programs this API started on demand over supervisord's socket.",
            ["program"],
            registry=r,
        )
        self.batches = Gauge(
            f"{PREFIX}_batches",
            "Batches by status, as each batch published it: the running ones now, the "
            "final ones over Temporal's retention.",
            ["status"],
            registry=r,
        )
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Batch requests finished, by outcome (completed or failed).",
            ["outcome"],
            registry=r,
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens",
            "Tokens of the answered batch requests (from their usage), by direction.",
            ["direction"],
            registry=r,
        )
        self.gpu_seconds = Counter(
            f"{PREFIX}_gpu_seconds",
            "Seconds finished shards held llama-server's slots.",
            registry=r,
        )
        self.running_requests = Gauge(
            f"{PREFIX}_running_batch_requests",
            "Requests of the running batches, by state (total, done, left).",
            ["state"],
            registry=r,
        )
        self.backlog = Gauge(
            f"{PREFIX}_queue_backlog",
            "Approximate tasks waiting in a task queue.",
            ["queue", "task_queue"],
            registry=r,
        )
        self.pollers = Gauge(
            f"{PREFIX}_queue_live_pollers",
            "Workers polling a task queue (seen within POLLER_LIVE_SECONDS).",
            ["queue", "task_queue"],
            registry=r,
        )
        self.temporal_up = Gauge(
            f"{PREFIX}_temporal_up",
            "1 when the last scrape could read Temporal, else 0.",
            registry=r,
        )
        self.scrape_seconds = Gauge(
            f"{PREFIX}_metrics_scrape_duration_seconds",
            "Time the last scrape spent reading Temporal.",
            registry=r,
        )
        self._seen: dict[str, _Seen] = {}
        # Final batches by state, counted once each: all of them at the first scrape, then
        # those closed since. `_counted` keeps the ids closed within the overlap of two
        # scrapes' listings (id → close time), so none is counted twice.
        self._final: dict[str, int] | None = None
        self._counted: dict[str, float] = {}
        self._last_scrape: datetime | None = None
        self._lock = asyncio.Lock()

    # Counted as they happen ------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_latency.labels(method, route, str(status)).observe(seconds)

    def count_starts(self, results: list[StartResult]) -> None:
        for result in results:
            if result.outcome == "started":
                self.workers_started.labels(result.program).inc()

    # Gathered at scrape time -------------------------------------------------------------

    def _account(self, batch: BatchStatus) -> None:
        seen = self._seen.setdefault(batch.id, _Seen())
        counts, usage = batch.request_counts, batch.usage
        now = _Seen(
            completed=counts.completed,
            failed=counts.failed,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            gpu_seconds=batch.gpu_seconds,
        )
        # Counts only grow; a smaller figure (the merge recounting) is not taken back.
        self.requests.labels("completed").inc(max(0, now.completed - seen.completed))
        self.requests.labels("failed").inc(max(0, now.failed - seen.failed))
        self.tokens.labels("input").inc(max(0, now.input_tokens - seen.input_tokens))
        self.tokens.labels("output").inc(max(0, now.output_tokens - seen.output_tokens))
        self.gpu_seconds.inc(max(0.0, now.gpu_seconds - seen.gpu_seconds))
        seen.completed = max(seen.completed, now.completed)
        seen.failed = max(seen.failed, now.failed)
        seen.input_tokens = max(seen.input_tokens, now.input_tokens)
        seen.output_tokens = max(seen.output_tokens, now.output_tokens)
        seen.gpu_seconds = max(seen.gpu_seconds, now.gpu_seconds)

    async def _collect_batches(self) -> None:
        client = await self.temporal.client()
        started = datetime.now(UTC)
        since = (self._last_scrape or started) - CLOSED_MARGIN
        since_text = since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        query = (
            f"WorkflowType = '{BATCH_WORKFLOW}' AND (ExecutionStatus = 'Running' "
            f"OR CloseTime > '{since_text}')"
        )
        if self._final is None:
            self._final = dict.fromkeys((s for s in BATCH_STATES if is_final(s)), 0)
            every_closed = (
                f"WorkflowType = '{BATCH_WORKFLOW}' AND ExecutionStatus != 'Running' "
                "AND ExecutionStatus != 'ContinuedAsNew'"
            )
            async for execution in client.list_workflows(every_closed, page_size=1000):
                batch = await self._read(execution)
                if batch is not None and is_final(batch.status):
                    self._count_final(batch, execution.close_time, since)
                    # The counters start from the batches' stored totals, so a restarted
                    # API does not count only what finished after it.
                    self._account(batch)
        running: dict[str, int] = dict.fromkeys((s for s in BATCH_STATES if not is_final(s)), 0)
        total = done = 0
        current: set[str] = set()
        async for execution in client.list_workflows(query, limit=MAX_RUNNING_BATCHES):
            batch = await self._read(execution)
            if batch is None:
                continue
            current.add(batch.id)
            self._account(batch)
            if is_final(batch.status):
                self._count_final(batch, execution.close_time, since)
            else:
                running[batch.status] += 1
                total += batch.request_counts.total
                done += batch.request_counts.completed + batch.request_counts.failed
        # A batch neither running nor closed since the last scrape is counted for good.
        for batch_id in set(self._seen) - current:
            del self._seen[batch_id]
        horizon = since.timestamp()
        for batch_id, closed_at in list(self._counted.items()):
            if closed_at < horizon:  # no later listing can return it again
                del self._counted[batch_id]
        for status, value in {**running, **self._final}.items():
            self.batches.labels(status).set(value)
        self.running_requests.labels("total").set(total)
        self.running_requests.labels("done").set(done)
        self.running_requests.labels("left").set(max(0, total - done))
        self._last_scrape = started

    @staticmethod
    async def _read(execution: WorkflowExecution) -> BatchStatus | None:
        """The batch a listed execution holds; None for an earlier run of a batch (listed
        again by its latest run)."""
        if execution.status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
            return None
        memo = await execution.memo()
        return batch_status(execution.id, execution.status, memo, execution.close_time)

    def _count_final(self, batch: BatchStatus, closed: datetime | None, since: datetime) -> None:
        assert self._final is not None
        if batch.id in self._counted:
            return
        self._final[batch.status] += 1
        # Any batch not known to have closed before `since` may be listed again.
        closed_at = closed.timestamp() if closed is not None else since.timestamp()
        self._counted[batch.id] = max(closed_at, since.timestamp())

    async def _collect_queues(self) -> None:
        states = await queue_states(self.settings, self.temporal)
        for queue, state in states.items():
            live = state.live_pollers(self.settings.POLLER_LIVE_SECONDS)
            self.backlog.labels(queue, state.name).set(state.backlog)
            self.pollers.labels(queue, state.name).set(len(live))

    async def render(self) -> bytes:
        """The Prometheus text exposition, Temporal read fresh (one scrape at a time)."""
        async with self._lock:
            started = time.monotonic()
            try:
                await asyncio.gather(self._collect_batches(), self._collect_queues())
            except Exception as exc:  # a scrape still answers, with temporal_up 0
                logger.warning("metrics: could not read Temporal: %s", exc)
                self.temporal_up.set(0)
            else:
                self.temporal_up.set(1)
            self.scrape_seconds.set(time.monotonic() - started)
            return generate_latest(self.registry)


def count_starts(supervisor: SupervisorControl, metrics: Metrics) -> SupervisorControl:
    """Wraps `supervisor.start` so every program it starts is counted."""
    original = supervisor.start

    async def start(program: str) -> StartResult:
        result = await original(program)
        metrics.count_starts([result])
        return result

    supervisor.start = start  # type: ignore[method-assign]
    return supervisor
