"""Records workflow histories for the replay test (tests/unit/test_replay.py).

    make record-histories            # or: python -m tests.replay.record

Runs every workflow of the project through its paths (a batch that completes, one that
continues as new, one without a valid line, one cancelled, one expired, one stopped by its
budget, one following the fleet's capacity, a single /process request) on a
private Temporal dev server, with the real workflow code and the activities replaced under
their real names, then writes each history as JSON to tests/replay/histories/<release>/
(CURRENT_RELEASE in tests/replay/__init__.py). Re-record after a workflow change; the folders
of earlier releases stay as they are: they are what running batches look like (see
docs/workflow-versioning.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from harness.batch_doubles import ReportingBatchDoubles as Activities
from harness.batch_doubles import start_dev_server
from kernel.inputs import BatchInput, ProcessInput
from tests.replay import CURRENT_RELEASE, HISTORIES
from workers.workflows.batch import BatchWorkflow
from workers.workflows.process import ProcessWorkflow


async def _batch(
    client: Client, name: str, activities: Activities, cancel_after: int = 0, **overrides: object
) -> str:
    queue = f"replay-{uuid.uuid4().hex[:8]}"
    batch_id = f"batch_replay_{name}_{uuid.uuid4().hex[:8]}"
    params = BatchInput(
        batch_id=batch_id,
        bucket="llm-batch",
        input_key=f"batches/{batch_id}/input.jsonl",
        gpu_task_queue=queue,
        created_at=1_796_000_000,
        metadata={"scenario": name},
        **overrides,  # type: ignore[arg-type]
    )
    async with Worker(
        client,
        task_queue=queue,
        workflows=[BatchWorkflow],
        activities=activities.all(),
        activity_executor=ThreadPoolExecutor(4),
    ):
        handle = await client.start_workflow(
            BatchWorkflow.run,
            params,
            id=batch_id,
            task_queue=queue,
            memo={"created_at": params.created_at, "metadata": params.metadata},
        )
        if cancel_after:
            while len(activities.shard_runs) < cancel_after:
                await asyncio.sleep(0.05)
            await handle.cancel()
        try:
            await handle.result()
        except WorkflowFailureError:
            pass  # the failed and cancelled scenarios end so on purpose
    return batch_id


async def _process(client: Client) -> str:
    queue = f"replay-{uuid.uuid4().hex[:8]}"
    process_id = f"proc_replay_{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[ProcessWorkflow], activities=Activities(0).all()
    ):
        await client.execute_workflow(
            ProcessWorkflow.run,
            ProcessInput(
                request_id=process_id,
                request={"custom_id": "process", "url": "/v1/completions", "body": {}},
                gpu_task_queue=queue,
            ),
            id=process_id,
            task_queue=queue,
        )
    return process_id


# Fields replay never reads that name the recording machine: failure stack traces (its
# paths) and worker identities (pid@hostname); sticky task queues, named after the worker,
# take their normal queue's name.
SCRUBBED_FIELDS = ("stackTrace", "identity")
STICKY = "TASK_QUEUE_KIND_STICKY"


def scrubbed(history_json: str) -> str:
    """The history without what names this machine (SCRUBBED_FIELDS)."""
    history = json.loads(history_json)

    def scrub(node: object) -> None:
        if isinstance(node, dict):
            for name in SCRUBBED_FIELDS:
                if isinstance(node.get(name), str):
                    node[name] = ""
            if node.get("kind") == STICKY and "normalName" in node:
                node["name"] = node["normalName"]
            for value in node.values():
                scrub(value)
        elif isinstance(node, list):
            for value in node:
                scrub(value)

    scrub(history)
    return json.dumps(history, indent=2) + "\n"


async def _write_runs(client: Client, workflow_id: str, name: str, out: Path) -> list[Path]:
    """Every run of a workflow (continue-as-new makes several), oldest first."""
    runs = [e async for e in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    runs.sort(key=lambda e: e.start_time)
    written = []
    for index, execution in enumerate(runs):
        handle = client.get_workflow_handle(workflow_id, run_id=execution.run_id)
        history = await handle.fetch_history()
        path = out / f"{name}-run{index}.json"
        path.write_text(scrubbed(history.to_json()))
        written.append(path)
    return written


async def record(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    env = await start_dev_server()
    try:
        client = env.client
        scenarios = {
            "batch-completed": await _batch(client, "completed", Activities(6), window=2),
            "batch-continued-as-new": await _batch(
                client, "continued", Activities(12), window=3, max_history_events=40
            ),
            "batch-no-valid-line": await _batch(client, "invalid", Activities(0, invalid=3)),
            "batch-cancelled": await _batch(
                client, "cancelled", Activities(40, shard_delay=0.1), cancel_after=2, window=2
            ),
            "batch-expired": await _batch(
                client,
                "expired",
                Activities(40, shard_delay=0.2),
                window=2,
                expires_at=int(time.time()) + 2,
            ),
            "batch-budget": await _batch(
                client,
                "budget",
                Activities(10),
                window=1,
                gpu_price_per_hour=3600.0,
                max_cost_usd=0.025,
            ),
            "batch-follow-capacity": await _batch(
                client, "capacity", Activities(6), window=1, follow_capacity=True
            ),
            "process": await _process(client),
        }
        written: list[Path] = []
        for name, workflow_id in scenarios.items():
            for stale in out.glob(f"{name}-run*.json"):
                stale.unlink()
            written += await _write_runs(client, workflow_id, name, out)
        return written
    finally:
        await env.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=HISTORIES / CURRENT_RELEASE,
        help="folder for the JSON files (default: the current release's)",
    )
    parser.add_argument(
        "--scrub-only",
        action="store_true",
        help="only scrub the histories already in --out (no recording)",
    )
    args = parser.parse_args(argv)
    if args.scrub_only:
        for path in sorted(args.out.glob("*.json")):
            path.write_text(scrubbed(path.read_text()))
        return 0
    for path in asyncio.run(record(args.out)):
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
