"""The Temporal client, connected once and lazily, and task queue descriptions."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from kernel.config import Settings
from kernel.temporal import connect_temporal

logger = logging.getLogger(__name__)


class TemporalUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Poller:
    identity: str
    last_access_time: datetime


@dataclass
class TaskQueueState:
    name: str
    backlog: int = 0
    pollers: list[Poller] = field(default_factory=list)

    def live_pollers(self, within_seconds: float) -> list[Poller]:
        cutoff = datetime.now(UTC) - timedelta(seconds=within_seconds)
        return [p for p in self.pollers if p.last_access_time >= cutoff]


class TemporalService:
    """Holds one client for the process; reconnects on the next call after a failure."""

    def __init__(self, settings: Settings, connect_timeout: float = 3.0) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        connect_temporal(self.settings, identity="api"), self.connect_timeout
                    )
                except (TimeoutError, RuntimeError, OSError) as exc:
                    raise TemporalUnavailable(
                        f"Temporal at {self.settings.TEMPORAL_ADDRESS} is not reachable: "
                        f"{exc or type(exc).__name__}"
                    ) from exc
                logger.info("connected to Temporal at %s", self.settings.TEMPORAL_ADDRESS)
        return self._client

    async def check(self, timeout: float = 2.0) -> None:
        client = await self.client()
        try:
            await client.service_client.check_health(timeout=timedelta(seconds=timeout))
        except Exception as exc:  # RPCError and transport errors alike
            raise TemporalUnavailable(f"Temporal health check failed: {exc}") from exc

    async def describe_task_queue(self, name: str, timeout: float = 2.0) -> TaskQueueState:
        """Backlog and pollers over both task types (workflow and activity)."""
        client = await self.client()
        state = TaskQueueState(name=name)
        newest: dict[str, datetime] = {}
        for task_type in (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ):
            response = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self.settings.TEMPORAL_NAMESPACE,
                    task_queue=TaskQueue(name=name, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                    task_queue_type=task_type,
                    report_stats=True,
                ),
                timeout=timedelta(seconds=timeout),
            )
            state.backlog += response.stats.approximate_backlog_count
            for poller in response.pollers:
                seen = poller.last_access_time.ToDatetime(tzinfo=UTC)
                if poller.identity not in newest or newest[poller.identity] < seen:
                    newest[poller.identity] = seen
        state.pollers = [Poller(identity, seen) for identity, seen in sorted(newest.items())]
        return state

    async def close(self) -> None:
        self._client = None
