"""Fleet: the same batch on one GPU box, then on two (a second llama-server and GPU worker
with their own BOX_NAME against the same Temporal, S3 and queues), on this machine.

    python bench/fleet.py [-n 3000] [--max-tokens 16] [--threads 1] [--slots 4]

`--threads` is each llama-server's CPU threads: with 1, a "box" is one core, so one box
against two shows how a batch spreads over boxes; with 0 (llama-server's default, every
core) the two boxes share the same two cores and two can only match one. Reports items/s,
the ratio two ÷ one, and the requests each box answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.client import Client  # noqa: E402

from harness import batches  # noqa: E402
from harness.fleet import Box  # noqa: E402
from harness.stack import Stack, start_stack  # noqa: E402


async def history_events(address: str, batch_id: str) -> list[int]:
    """History events of each run of the batch's workflow (continue-as-new makes runs)."""
    client = await Client.connect(address)
    lengths = []
    async for run in client.list_workflows(f"WorkflowId = '{batch_id}'"):
        events = client.get_workflow_handle(batch_id, run_id=run.run_id).fetch_history_events()
        lengths.append(len([event async for event in events]))
    return lengths


def run_batch(stack: Stack, count: int, max_tokens: int, shard: int, tag: str) -> dict[str, Any]:
    items = batches.chat_items(count, prefix=tag, max_tokens=max_tokens)
    started = time.monotonic()
    batch = batches.submit(stack, items=items, shard_size=shard)
    done = batches.wait_terminal(stack, batch["id"], timeout=1800)
    seconds = time.monotonic() - started
    assert done["status"] == "completed", done
    batches.assert_exactly_once(
        batches.results(stack, batch["id"]), {f"{tag}{i}" for i in range(count)}
    )
    return {
        "seconds": round(seconds, 2),
        "items_per_s": round(count / seconds, 1),
        "boxes": done["boxes"],
        "shards": done["shard_count"],
        "history_events": asyncio.run(history_events(stack.env["TEMPORAL_ADDRESS"], batch["id"])),
    }


def wait_live(stack: Stack, names: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        boxes = stack.http.get("/queues").json()["boxes"]
        if names <= {box["box"] for box in boxes if box["live"] and box["slots"]}:
            return
        time.sleep(0.5)
    raise AssertionError(f"boxes {names} not live")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=3000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    threads = f"--threads {options.threads} --threads-batch {options.threads}"
    extra = threads if options.threads > 0 else ""
    figures: dict[str, Any] = {"count": options.count, "threads": options.threads}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as base:
        stack = start_stack(
            Path(base),
            BOX_NAME="box-a",
            LLAMA_PARALLEL=str(options.slots),
            LLAMA_CTX_PER_SLOT="512",
            LLAMA_EXTRA_ARGS=extra,
            WORKER_IDLE_EXIT_SECONDS="600",
        )
        box_b = Box(stack, "box-b", options.slots, Path(base))
        if extra:
            box_b.extra["LLAMA_EXTRA_ARGS"] = extra
        try:
            run_batch(stack, 200, options.max_tokens, options.shard_size, "warm")
            wait_live(stack, {"box-a"})
            figures["one box"] = run_batch(
                stack, options.count, options.max_tokens, options.shard_size, "one"
            )
            box_b.start()
            wait_live(stack, {"box-a", "box-b"})
            time.sleep(11)  # one capacity refresh
            figures["two boxes"] = run_batch(
                stack, options.count, options.max_tokens, options.shard_size, "two"
            )
        finally:
            box_b.stop()
            stack.stop()
    figures["ratio two / one"] = round(
        figures["two boxes"]["items_per_s"] / figures["one box"]["items_per_s"], 2
    )
    print(json.dumps(figures, indent=1))
    if options.json:
        options.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
