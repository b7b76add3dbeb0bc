"""One request, run on the GPU queue; the API waits for the result up to its timeout."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from kernel.contract import PROCESS_WORKFLOW, ProcessInput, ProcessResult
    from workers.activities.inference import InferenceActivities


@workflow.defn(name=PROCESS_WORKFLOW)
class ProcessWorkflow:
    @workflow.run
    async def run(self, params: ProcessInput) -> ProcessResult:
        return await workflow.execute_activity_method(
            InferenceActivities.process_request,
            params,
            task_queue=params.gpu_task_queue,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=500),
                maximum_interval=timedelta(seconds=10),
                maximum_attempts=10,
            ),
        )
