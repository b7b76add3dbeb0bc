"""Scale: one batch of 100,000 lines submitted with `llm-batch submit`, on the tiny model.

    python bench/scale.py [-n 100000] [--max-tokens 8] [--direct-count 3000] [--json PATH]

Boots its own stack, writes the input JSONL to local disk (streamed) and submits it the way a
user does: `llm-batch submit FILE`, which streams it through /v1/files. While the batch runs
it samples the resident memory (process tree) of the API, both workers, the Temporal dev
server and the S3 server once a second. At the end it checks the output has every custom_id
exactly once (streamed), counts the S3 objects and bytes in the bucket by kind, reports the
history length of every workflow run of the batch (continue-as-new keeps each run short),
and measures llama-server directly on the same stack with the same request shape at its slot
count (bench/throughput.py's `direct`), before and after the batch, for the pipeline ÷ direct
ratio (against the mean of the two).
Targets: < 300 MB each, < 10,000 events a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.client import Client  # noqa: E402
from throughput import direct, prompts  # noqa: E402

from harness.stack import Stack, start_stack  # noqa: E402
from kernel.keys import BATCHES_PREFIX  # noqa: E402
from kernel.storage import list_objects  # noqa: E402

# supervisord program → the name in the report. llama holds the model: sampled, not a target.
PROGRAMS = {
    "fastapi": "api",
    "worker-cpu": "worker-cpu",
    "worker-gpu": "worker-gpu",
    "temporal": "temporal",
    "minio": "s3",
    "llama": "llama-server",
}
TARGETS = ("api", "worker-cpu", "worker-gpu", "temporal", "s3")
BUCKET = "llm-batch"


def tree_rss_mb(pid: int) -> float:
    """Resident memory of the process and its descendants (a wrapper script's child too)."""
    parents: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines()
            )
        except (OSError, ValueError):
            continue
        child = int(entry.name)
        parents[int(fields.get("PPid", "0").strip() or 0)].append(child)
        rss[child] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo.extend(parents.get(current, []))
    return total / 1024


class RssSampler(threading.Thread):
    """Peak resident memory of each program, sampled once a second until stopped."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.peaks = dict.fromkeys(PROGRAMS.values(), 0.0)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                programs = asyncio.run(self.stack.supervisor().programs())
            except Exception:  # noqa: BLE001 - a missed sample is no reason to stop sampling
                programs = {}
            for program, name in PROGRAMS.items():
                info = programs.get(program)
                if info is not None and info.pid:
                    self.peaks[name] = max(self.peaks[name], tree_rss_mb(info.pid))
            self.halt.wait(1)

    def stop(self) -> dict[str, float]:
        self.halt.set()
        self.join(timeout=10)
        return {k: round(v, 1) for k, v in self.peaks.items()}


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


def write_input(path: Path, count: int, max_tokens: int) -> int:
    """The input file, a line at a time; each line has the shape of bench/throughput.py's."""
    with path.open("w") as file:
        for i in range(count):
            line = prompts(1, max_tokens, "s")[0]
            line["custom_id"] = f"s{i}"
            line["messages"][0]["content"] = f"Write about item {i}."
            file.write(json.dumps(line) + "\n")
    return path.stat().st_size


def submit(stack: Stack, path: Path) -> str:
    """`llm-batch submit FILE` of this virtualenv against the stack: the batch id."""
    command = [str(Path(sys.prefix) / "bin" / "llm-batch"), "--url", stack.api_url]
    if stack.env.get("API_KEY"):
        command += ["--api-key", stack.env["API_KEY"]]
    result = subprocess.run(
        [*command, "--json", "submit", str(path)],
        env=stack.process_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"llm-batch submit failed ({result.returncode}): {result.stderr}")
    return str(json.loads(result.stdout)["id"])


def object_kind(key: str) -> str:
    """batches/<id>/shards/000001.jsonl → shards; files/file-… → files (uploads)."""
    if key.startswith(BATCHES_PREFIX):
        rest = key.removeprefix(BATCHES_PREFIX).partition("/")[2]
        return rest.partition("/")[0] if "/" in rest else rest or "(batch)"
    return key.partition("/")[0] if "/" in key else key


def bucket_usage(stack: Stack) -> dict[str, dict[str, int]]:
    usage: dict[str, dict[str, int]] = defaultdict(lambda: {"objects": 0, "bytes": 0})
    for item in list_objects(stack.s3(), BUCKET, ""):
        for kind in (object_kind(item.object_name or ""), "total"):
            usage[kind]["objects"] += 1
            usage[kind]["bytes"] += item.size or 0
    return dict(sorted(usage.items()))


def check_output(stack: Stack, batch_id: str, count: int) -> dict[str, Any]:
    """Streams the output: every custom_id once (a set of short strings, nothing more)."""
    seen: set[str] = set()
    lines = duplicates = 0
    with stack.http.stream("GET", f"/batch/{batch_id}/results", timeout=600) as stream:
        for line in stream.iter_lines():
            if line.strip():
                lines += 1
                custom_id = json.loads(line)["custom_id"]
                duplicates += custom_id in seen
                seen.add(custom_id)
    return {
        "output_lines": lines,
        "duplicates": duplicates,
        "exactly_once": lines == count and duplicates == 0 and len(seen) == count,
    }


async def history_lengths(address: str, batch_id: str) -> list[int]:
    client = await Client.connect(address)
    lengths = []
    async for run in client.list_workflows(f"WorkflowId = '{batch_id}'"):
        handle = client.get_workflow_handle(batch_id, run_id=run.run_id)
        lengths.append(
            (await handle.describe()).raw_description.workflow_execution_info.history_length
        )
    return lengths


def measure_direct(stack: Stack, count: int, max_tokens: int) -> dict[str, Any]:
    seconds, slots = asyncio.run(
        direct(stack.env["LLAMA_URL"], prompts(count, max_tokens, "direct"))
    )
    figures = {"requests": count, "slots": slots, "seconds": round(seconds, 1)}
    print(f"direct llama-server: {count} requests at {slots} slots in {seconds:.1f}s", flush=True)
    return {**figures, "items_per_s": round(count / seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=100_000)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--direct-count", type=int, default=3000, help="requests of the direct llama-server sample"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    # SIGTERM (a timeout, Ctrl-C from a wrapper) must still stop the stack this run booted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="scale-") as workdir:
        stack = start_stack(Path(workdir), WORKER_IDLE_EXIT_SECONDS="600")
        try:
            figures = run(stack, Path(workdir), args)
        finally:
            stack.stop()
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    ok = all(figures["peak_rss_mb"][name] < 300 for name in TARGETS)
    ok = ok and max(figures["history_events_per_run"]) < 10_000 and figures["exactly_once"]
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


def run(stack: Stack, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    count = args.count
    load_start = os.getloadavg()
    path = workdir / "scale.jsonl"
    started = time.monotonic()
    size = write_input(path, count, args.max_tokens)
    print(f"wrote {count} lines ({size / 1e6:.1f} MB) in {time.monotonic() - started:.1f}s")
    # Direct llama-server, before and after the batch: the machine's load changes over a long run.
    before = measure_direct(stack, args.direct_count, args.max_tokens)
    sampler = RssSampler(stack)
    sampler.start()
    started = time.monotonic()
    batch_id = submit(stack, path)
    upload_seconds = time.monotonic() - started
    print(f"llm-batch submit: {batch_id} in {upload_seconds:.1f}s", flush=True)
    path.unlink()
    started = time.monotonic()
    batch: dict[str, Any] = {}
    last_report = 0.0
    while True:
        batch = stack.http.get(f"/batch/{batch_id}").json()
        if batch["is_terminal"]:
            break
        if time.monotonic() - last_report > REPORT_SECONDS:
            last_report = time.monotonic()
            rss = " ".join(f"{k}={v:.0f}" for k, v in sampler.peaks.items())
            print(
                f"  {time.monotonic() - started:6.0f}s {progress(batch)} | peak MB {rss}",
                flush=True,
            )
        time.sleep(1)
    elapsed = time.monotonic() - started
    output = check_output(stack, batch_id, count)
    peaks = sampler.stop()
    events = asyncio.run(history_lengths(stack.env["TEMPORAL_ADDRESS"], batch_id))
    usage = bucket_usage(stack)
    after = measure_direct(stack, args.direct_count, args.max_tokens)
    pipeline_rate = count / elapsed
    direct_rate = (before["items_per_s"] + after["items_per_s"]) / 2
    return {
        "lines": count,
        "max_tokens": args.max_tokens,
        "input_bytes": size,
        "status": batch["status"],
        "request_counts": batch["request_counts"],
        "upload_seconds": round(upload_seconds, 1),
        "seconds": round(elapsed, 1),
        "items_per_s": round(pipeline_rate, 1),
        "direct": {"before": before, "after": after, "items_per_s": round(direct_rate, 1)},
        "ratio_to_direct": round(pipeline_rate / direct_rate, 3),
        **output,
        "peak_rss_mb": peaks,
        "workflow_runs": len(events),
        "history_events_per_run": events,
        "s3_usage": usage,
        "load_average": {"start": load_start, "end": os.getloadavg()},
    }


if __name__ == "__main__":
    raise SystemExit(main())
