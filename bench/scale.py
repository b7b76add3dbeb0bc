"""Scale: one batch of 100,000 lines from an uploaded JSONL object, on the tiny model.

    python bench/scale.py [-n 100000] [--max-tokens 8]

Boots its own stack, uploads the input to the bucket (streamed), submits it with input_key,
and while it runs samples the resident memory of the API and both workers once a second.
At the end it checks the output has every custom_id exactly once and reports the peak
memory of each process and the history length of every workflow run of the batch
(continue-as-new keeps each run short). Targets: < 300 MB each, < 10,000 events a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.client import Client  # noqa: E402

from harness.stack import Stack, start_stack  # noqa: E402
from kernel.storage import write_jsonl  # noqa: E402

PROGRAMS = ("fastapi", "worker-cpu", "worker-gpu")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


REPORT_SECONDS = 5.0


def progress(batch: dict[str, Any]) -> str:
    """One progress line from the API's own figures: done of total, rate, time left."""
    counts = batch["request_counts"]
    done = counts["completed"] + counts["failed"]
    total = counts["total"] or 0
    percent = f"{100 * done / total:5.1f}%" if total else "    –"
    rate = batch.get("requests_per_second")
    left = batch.get("seconds_left")
    return (
        f"{batch['status']:<11} {percent} {done}/{total} "
        f"{rate if rate is not None else '–'} req/s, "
        f"{f'{left:.0f}s' if left is not None else '–'} left"
    )


def upload_input(stack: Stack, key: str, count: int, max_tokens: int) -> int:
    lines = (
        {
            "custom_id": f"s{i}",
            "messages": [{"role": "user", "content": f"Summarise record {i}."}],
            "max_tokens": max_tokens,
        }
        for i in range(count)
    )
    return write_jsonl(stack.s3(), "llm-batch", key, lines)


async def history_lengths(address: str, batch_id: str) -> list[int]:
    client = await Client.connect(address)
    lengths = []
    async for run in client.list_workflows(f"WorkflowId = '{batch_id}'"):
        handle = client.get_workflow_handle(batch_id, run_id=run.run_id)
        lengths.append(
            (await handle.describe()).raw_description.workflow_execution_info.history_length
        )
    return lengths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=100_000)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    # SIGTERM (a timeout, Ctrl-C from a wrapper) must still stop the stack this run booted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="scale-") as workdir:
        stack = start_stack(Path(workdir), WORKER_IDLE_EXIT_SECONDS="600")
        try:
            figures = run(stack, args.count, args.max_tokens)
        finally:
            stack.stop()
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = all(v < 300 for v in figures["peak_rss_mb"].values())
    ok = ok and max(figures["history_events_per_run"]) < 10_000 and figures["exactly_once"]
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


def run(stack: Stack, count: int, max_tokens: int) -> dict[str, Any]:
    key = "uploads/scale.jsonl"
    started = time.monotonic()
    size = upload_input(stack, key, count, max_tokens)
    print(f"uploaded {count} lines ({size / 1e6:.1f} MB) in {time.monotonic() - started:.1f}s")
    response = stack.http.post("/batch", json={"input_key": key})
    response.raise_for_status()
    batch_id = response.json()["id"]
    started = time.monotonic()
    peaks = dict.fromkeys(PROGRAMS, 0.0)
    batch: dict[str, Any] = {}
    last_report = 0.0
    while True:
        for program in PROGRAMS:
            pid = stack.program_pid(program)
            if pid:
                peaks[program] = max(peaks[program], rss_mb(pid))
        batch = stack.http.get(f"/batch/{batch_id}").json()
        if batch["is_terminal"]:
            break
        if time.monotonic() - last_report > REPORT_SECONDS:
            last_report = time.monotonic()
            print(f"  {time.monotonic() - started:6.0f}s {progress(batch)}", flush=True)
        time.sleep(1)
    elapsed = time.monotonic() - started
    seen: set[str] = set()
    lines = duplicates = 0
    with stack.http.stream("GET", f"/batch/{batch_id}/results", timeout=600) as stream:
        for line in stream.iter_lines():
            if line.strip():
                lines += 1
                custom_id = json.loads(line)["custom_id"]
                duplicates += custom_id in seen
                seen.add(custom_id)
    events = asyncio.run(history_lengths(stack.env["TEMPORAL_ADDRESS"], batch_id))
    return {
        "lines": count,
        "status": batch["status"],
        "request_counts": batch["request_counts"],
        "seconds": round(elapsed, 1),
        "items_per_s": round(count / elapsed, 1),
        "output_lines": lines,
        "exactly_once": lines == count and duplicates == 0 and len(seen) == count,
        "peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()},
        "workflow_runs": len(events),
        "history_events_per_run": events,
    }


if __name__ == "__main__":
    raise SystemExit(main())
