"""Single requests: run as a tiny workflow, answered synchronously when done in time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from temporalio.client import WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from app.api.schemas import ProcessOutcome
from app.core.errors import NotFound, ServiceUnavailable
from app.services.batches import START_TIMEOUT, idempotent_id, temporal_client
from app.services.temporal import TemporalService
from app.services.workers import WorkerStarter
from kernel.config import Settings
from kernel.inputs import PROCESS_WORKFLOW, ProcessInput, ProcessResult

logger = logging.getLogger(__name__)


def new_process_id() -> str:
    return f"proc_{uuid.uuid4().hex}"


def _completed(process_id: str, result: ProcessResult) -> ProcessOutcome:
    return ProcessOutcome(id=process_id, status="completed", output=result.output)


def _failed(process_id: str, exc: BaseException) -> ProcessOutcome:
    cause = exc.__cause__ or exc
    return ProcessOutcome(id=process_id, status="failed", error={"message": str(cause)})


def _running(process_id: str) -> ProcessOutcome:
    return ProcessOutcome(id=process_id, status="in_progress")


class ProcessService:
    def __init__(
        self, settings: Settings, temporal: TemporalService, workers: WorkerStarter
    ) -> None:
        self.settings = settings
        self.temporal = temporal
        self.workers = workers

    async def submit(
        self, request: dict[str, Any], timeout_s: float, idempotency_key: str | None = None
    ) -> tuple[bool, ProcessOutcome]:
        """(finished, outcome): finished within timeout_s, or still running; the
        outcome's `workers` says what starting the GPU worker did. With an `idempotency_key` a retry
        waits on the request the first call started."""
        # The GPU worker runs the request; asking supervisord for it runs beside the
        # workflow's start instead of ahead of it (a request waits on its queue meanwhile).
        starting = asyncio.create_task(self.workers.ensure(("gpu",)))
        try:
            finished, outcome = await self._run(request, timeout_s, idempotency_key)
        finally:
            workers = await starting
        return finished, outcome.model_copy(update={"workers": workers})

    async def _run(
        self, request: dict[str, Any], timeout_s: float, idempotency_key: str | None
    ) -> tuple[bool, ProcessOutcome]:
        client = await temporal_client(self.temporal)
        if idempotency_key is not None:
            process_id = idempotent_id("proc", idempotency_key)
        else:
            process_id = new_process_id()
        try:
            handle = await client.start_workflow(
                PROCESS_WORKFLOW,
                ProcessInput(
                    request_id=process_id,
                    request=request,
                    gpu_task_queue=self.settings.gpu_urgent_task_queue,
                ),
                id=process_id,
                # The GPU worker runs the workflow and, as a local activity, the request, on
                # a queue of its own that batch shards never fill.
                task_queue=self.settings.gpu_urgent_task_queue,
                result_type=ProcessResult,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                rpc_timeout=START_TIMEOUT,
            )
        except WorkflowAlreadyStartedError:  # same key, request already finished
            handle = client.get_workflow_handle(process_id, result_type=ProcessResult)
        except RPCError as exc:
            raise ServiceUnavailable(f"could not start the request: {exc}") from exc
        try:
            result = await asyncio.wait_for(handle.result(), timeout_s)
        except TimeoutError:
            return False, _running(process_id)
        except WorkflowFailureError as exc:
            return True, _failed(process_id, exc)
        return True, _completed(process_id, result)

    async def get(self, process_id: str) -> tuple[bool, ProcessOutcome]:
        client = await temporal_client(self.temporal)
        handle = client.get_workflow_handle(process_id, result_type=ProcessResult)
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise NotFound(f"no request with id {process_id!r}") from None
            raise ServiceUnavailable(f"Temporal: {exc}") from exc
        if description.workflow_type != PROCESS_WORKFLOW:
            raise NotFound(f"no request with id {process_id!r}")
        if description.close_time is None:
            return False, _running(process_id)
        try:
            return True, _completed(process_id, await handle.result())
        except WorkflowFailureError as exc:
            return True, _failed(process_id, exc)
