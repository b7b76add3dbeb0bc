"""One request, run on the GPU queue: the GPU worker runs this workflow and the request itself
as a local activity, so a request costs one task hand-over (see docs/latency.md).

Durable all the same: a worker that dies mid-request loses its workflow task, which times
out and goes to the next GPU worker, which runs the request again. Priority over batch
shards stays with the request: the local activity runs in the GPU worker's process and asks
its llama-server client for an urgent slot.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from kernel.inputs import PROCESS_WORKFLOW, ProcessInput, ProcessResult
from workers.activities.inference import InferenceActivities

# The SDK keeps a long local activity's workflow task alive by itself, so a request may take
# as long as a normal activity would.
REQUEST_TIMEOUT = timedelta(minutes=30)
REQUEST_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
)


# Not sandboxed: the workflow only calls one local activity, and the sandbox's per-run set-up
# costs ~6 ms of CPU a request, which on a box whose cores also feed llama-server is latency.
@workflow.defn(name=PROCESS_WORKFLOW, sandboxed=False)
class ProcessWorkflow:
    @workflow.run
    async def run(self, params: ProcessInput) -> ProcessResult:
        return await workflow.execute_local_activity_method(
            InferenceActivities.process_request,
            params,
            start_to_close_timeout=REQUEST_TIMEOUT,
            retry_policy=REQUEST_RETRY,
        )
