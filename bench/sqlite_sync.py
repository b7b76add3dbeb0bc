"""What Temporal's SQLite durability setting costs: the batch workflow (real workflow code,
instant activities) on a dev server with a database file, per `synchronous` setting.

    python bench/sqlite_sync.py [--shards 200] [--batches 3] [--modes off,normal,full]

Each mode gets its own server and database file in a temporary folder; batches run one
after another so that the figure is Temporal's own persistence cost per shard, which is an
upper bound: a real shard spends seconds on llama-server for every few Temporal writes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.batch_doubles import ReportingBatchDoubles as Activities  # noqa: E402
from kernel.inputs import BatchInput  # noqa: E402
from workers.workflows.batch import BatchWorkflow  # noqa: E402

VENV_BIN = Path(sys.executable).parent


async def shards_per_second(mode: str, shards: int, batches: int, folder: Path) -> float:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(VENV_BIN / "temporal"),
        dev_server_database_filename=str(folder / f"{mode}.db"),
        dev_server_extra_args=[
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            f"synchronous={mode}",
            "--dynamic-config-value",
            "frontend.enableServerVersionCheck=false",
            "--log-level",
            "error",
        ],
    )
    try:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        activities = Activities(shards)
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[BatchWorkflow],
            activities=activities.all(),
            activity_executor=ThreadPoolExecutor(4),
        ):
            started = time.perf_counter()
            for _ in range(batches):
                batch_id = f"batch_bench_{uuid.uuid4().hex[:8]}"
                await env.client.execute_workflow(
                    BatchWorkflow.run,
                    BatchInput(batch_id=batch_id, bucket="b", input_key="in", gpu_task_queue=queue),
                    id=batch_id,
                    task_queue=queue,
                )
            return shards * batches / (time.perf_counter() - started)
    finally:
        await env.shutdown()


async def run(args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeat):
            for mode in args.modes.split(","):
                rate = await shards_per_second(mode, args.shards, args.batches, Path(folder))
                figures[mode] = max(figures.get(mode, 0.0), rate)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="best of N per mode")
    parser.add_argument("--modes", default="off,normal,full")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    base = figures.get("off") or next(iter(figures.values()))
    print(f"{'synchronous':<12} {'shards/s':>9} {'vs off':>7}")
    for mode, rate in figures.items():
        print(f"{mode:<12} {rate:>9.1f} {rate / base:>7.2f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
