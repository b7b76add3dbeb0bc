"""Pipeline throughput against llama-server itself, measured side by side in one run.

    python bench/throughput.py [-n 2000] [--max-tokens 32] [--repeat 1]

Boots its own stack (local mode, tiny model, free ports, temporary folder) unless --api and
--llama point at a running one, then measures:

  direct     N chat requests straight to llama-server at concurrency = its slot count
  pipeline   the same N requests through POST /batch, from the POST to status completed
  ratio      pipeline items/s ÷ direct items/s (target ≥ 0.9)
  cold start POST /batch with both workers stopped → first result line readable
  /process   latency of POST /process against a direct call (p50, p95, overhead)
  /v1        the same for POST /v1/chat/completions when the API has that route
             (a 404 skips it with a note)

--latency-only measures only the last two (sequential calls, --process-calls of each).

Direct and pipeline runs alternate (--repeat times) so both see the same machine load.
Prints a table and writes the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stack import Stack, start_stack  # noqa: E402


def prompts(count: int, max_tokens: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "messages": [{"role": "user", "content": f"Write about item {i}."}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        for i in range(count)
    ]


async def direct(llama_url: str, items: list[dict[str, Any]]) -> tuple[float, int]:
    """The baseline: the leanest client there is here (aiohttp, as the GPU worker uses),
    reading every answer, at exactly llama-server's slot count."""
    async with aiohttp.ClientSession(llama_url) as client:
        async with client.get("/props") as props:
            slots = int((await props.json())["total_slots"])
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)

        async def drain() -> None:
            while not queue.empty():
                item = queue.get_nowait()
                body = {k: v for k, v in item.items() if k != "custom_id"}
                async with client.post("/v1/chat/completions", json=body) as response:
                    response.raise_for_status()
                    await response.json()

        started = time.perf_counter()
        await asyncio.gather(*(drain() for _ in range(slots)))
        return time.perf_counter() - started, slots


PROGRESS_SECONDS = 5.0


def wait_batch(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    """Polls slowly until the last quarter, then often: each status call costs the API and
    Temporal CPU that llama-server lacks on a small machine (10 polls/s cost ~5% here).
    Prints a progress line every PROGRESS_SECONDS."""
    shown = time.monotonic()
    while True:
        batch: dict[str, Any] = api.get(f"/batch/{batch_id}").json()
        if batch["is_terminal"]:
            return batch
        counts = batch["request_counts"]
        if time.monotonic() - shown >= PROGRESS_SECONDS:
            shown = time.monotonic()
            print(
                f"  {batch_id}: {counts['completed']}/{counts['total']} {batch['status']}",
                file=sys.stderr,
                flush=True,
            )
        nearly_done = counts["total"] and counts["completed"] >= 0.75 * counts["total"]
        time.sleep(0.05 if nearly_done or batch["status"] == "finalizing" else 0.5)


def pipeline(api: httpx.Client, items: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    response = api.post("/batch", json={"items": items})
    response.raise_for_status()
    batch = wait_batch(api, response.json()["id"])
    elapsed = time.perf_counter() - started
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["completed"] != len(items):
        raise SystemExit(f"pipeline batch did not complete cleanly: {batch}")
    return elapsed


def cold_start(api: httpx.Client, stack: Stack | None) -> dict[str, float] | None:
    if stack is None:
        return None
    stack.supervisorctl("stop", "worker-cpu", "worker-gpu")
    started = time.perf_counter()
    batch_id = api.post("/batch", json={"items": prompts(1, 8, "cold")}).json()["id"]
    while not api.get(f"/batch/{batch_id}/results").text.strip():
        time.sleep(0.02)
    first_result = time.perf_counter() - started
    wait_batch(api, batch_id)
    return {"first_result_s": first_result, "completed_s": time.perf_counter() - started}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


SYNC_BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}


def served_model(api: httpx.Client) -> str | None:
    """The model GET /v1/models lists, or None when the API has no /v1 routes."""
    response = api.get("/v1/models")
    if response.status_code != 200:
        return None
    models = response.json().get("data") or []
    return str(models[0]["id"]) if models else "default"


def latency_summary(direct_ms: list[float], path_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": statistics.median(path_ms),
        "p95_ms": percentile(path_ms, 95),
        "overhead_p50_ms": statistics.median(path_ms) - statistics.median(direct_ms),
        "overhead_p95_ms": percentile(path_ms, 95) - percentile(direct_ms, 95),
    }


def process_latency(api: httpx.Client, llama_url: str, count: int) -> dict[str, Any]:
    """Sequential calls, interleaved (direct, /process, /v1) so all see the same load."""
    v1_model = served_model(api)
    v1_body = None
    if v1_model is not None:
        v1_body = {**SYNC_BODY, "model": v1_model}
        probe = api.post("/v1/chat/completions", json=v1_body)
        if probe.status_code == 404:
            v1_body = None
    if v1_body is None:
        print("  note: POST /v1/chat/completions answers 404 on this API; measuring /process only")
    direct_ms: list[float] = []
    process_ms: list[float] = []
    v1_ms: list[float] = []

    def timed(client: httpx.Client, path: str, body: dict[str, Any], into: list[float]) -> None:
        started = time.perf_counter()
        response = client.post(path, json=body)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.text}")
        into.append(elapsed)

    with httpx.Client(base_url=llama_url, timeout=60) as llama:
        calls = [
            lambda: timed(llama, "/v1/chat/completions", SYNC_BODY, direct_ms),
            lambda: timed(api, "/process", SYNC_BODY, process_ms),
        ]
        if v1_body is not None:
            calls.append(lambda: timed(api, "/v1/chat/completions", v1_body, v1_ms))
        for i in range(count):
            # Rotated, so no path always runs right after another (llama-server's threads
            # keep a core busy for a few ms after each answer).
            for k in range(len(calls)):
                calls[(i + k) % len(calls)]()
    figures: dict[str, Any] = {
        "calls": count,
        "direct_p50_ms": statistics.median(direct_ms),
        "direct_p95_ms": percentile(direct_ms, 95),
        "process": latency_summary(direct_ms, process_ms),
        "v1_chat": latency_summary(direct_ms, v1_ms) if v1_ms else None,
    }
    return figures


def print_latency(figures: dict[str, Any]) -> None:
    print(
        f"\nsynchronous path, {figures['calls']} sequential calls each "
        f"(p50 / p95 in ms; overhead = path - direct)"
    )
    direct_p50, direct_p95 = figures["direct_p50_ms"], figures["direct_p95_ms"]
    print(f"  direct llama-server         {direct_p50:7.1f} / {direct_p95:7.1f}")
    for label, key in (("POST /process", "process"), ("POST /v1/chat/completions", "v1_chat")):
        row = figures[key]
        if row is None:
            print(f"  {label:27s} skipped (404)")
            continue
        print(
            f"  {label:27s} {row['p50_ms']:7.1f} / {row['p95_ms']:7.1f}   "
            f"overhead {row['overhead_p50_ms']:6.1f} / {row['overhead_p95_ms']:6.1f}"
            f"   (target p50 <= 30)"
        )


def throughput(api: httpx.Client, llama_url: str, stack: Stack | None, args: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {"n": args.count, "max_tokens": args.max_tokens}
    cold = cold_start(api, stack)
    # Warm both paths: workers polling, llama-server's caches and slots.
    asyncio.run(direct(llama_url, prompts(40, args.max_tokens, "warm")))
    pipeline(api, prompts(40, args.max_tokens, "warm"))
    direct_s: list[float] = []
    pipeline_s: list[float] = []
    slots = 0
    for run in range(args.repeat):
        seconds, slots = asyncio.run(
            direct(llama_url, prompts(args.count, args.max_tokens, f"d{run}"))
        )
        direct_s.append(seconds)
        pipeline_s.append(pipeline(api, prompts(args.count, args.max_tokens, f"p{run}")))
    direct_rate = args.count / statistics.median(direct_s)
    pipeline_rate = args.count / statistics.median(pipeline_s)
    figures.update(
        slots=slots,
        direct_items_per_s=direct_rate,
        pipeline_items_per_s=pipeline_rate,
        ratio=pipeline_rate / direct_rate,
        direct_seconds=direct_s,
        pipeline_seconds=pipeline_s,
        cold_start=cold,
    )
    return figures


def print_throughput(figures: dict[str, Any]) -> None:
    print(
        f"\n{figures['n']} chat requests, max_tokens {figures['max_tokens']}, "
        f"{figures['slots']} slots"
    )
    print(f"  direct llama-server  {figures['direct_items_per_s']:8.1f} items/s")
    print(f"  POST /batch          {figures['pipeline_items_per_s']:8.1f} items/s")
    print(f"  ratio (batch/direct) {figures['ratio']:8.3f}   (target >= 0.9)")
    cold = figures["cold_start"]
    if cold:
        print(
            f"  cold start: first result {cold['first_result_s']:.2f}s, "
            f"completed {cold['completed_s']:.2f}s (workers stopped before the POST)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--process-calls", type=int, default=200, help="sequential calls per synchronous path"
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="measure only the synchronous paths (/process, /v1/chat/completions)",
    )
    parser.add_argument("--api", help="use a running API (default: boot a stack)")
    parser.add_argument("--llama", help="llama-server URL of that running stack")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the stack
    stack: Stack | None = None
    workdir = tempfile.TemporaryDirectory(prefix="bench-")
    if args.api:
        if not args.llama:
            parser.error("--api needs --llama")
        api_url, llama_url = args.api, args.llama
    else:
        print("booting a local stack ...", flush=True)
        stack = start_stack(Path(workdir.name), WORKER_IDLE_EXIT_SECONDS="600")
        api_url, llama_url = stack.api_url, stack.env["LLAMA_URL"]
        print(f"stack healthy in {stack.started_seconds:.1f}s", flush=True)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    api = httpx.Client(base_url=api_url, headers=headers, timeout=120)
    figures: dict[str, Any] = {}
    try:
        if not args.latency_only:
            figures["throughput"] = throughput(api, llama_url, stack, args)
        # Warm the synchronous path (worker start, sticky cache, connections) first.
        for _ in range(20):
            api.post("/process", json=SYNC_BODY).raise_for_status()
        figures["latency"] = process_latency(api, llama_url, args.process_calls)
    finally:
        api.close()
        if stack is not None:
            stack.stop()
        workdir.cleanup()

    if "throughput" in figures:
        print_throughput(figures["throughput"])
    print_latency(figures["latency"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
