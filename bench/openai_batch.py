"""A batch through OpenAI's Batch API (`/v1/files` + `/v1/batches`, with the official `openai`
client) against the same batch through the native `POST /batch`, in one run.

    python bench/openai_batch.py [-n 2000] [--max-tokens 32] [--repeat 2]

Boots its own stack (local mode, tiny model, free ports, temporary folder) unless --api points
at a running one. Each run times, from the first request to the output downloaded:

  native   POST /batch with the lines inline → poll GET /batch/{id} → GET .../results
  openai   files.create → batches.create → poll batches.retrieve → files.content

Runs alternate so both see the same machine load; both poll every --poll seconds. Prints
items/s for each and the ratio openai ÷ native.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stack import Stack, start_stack  # noqa: E402

OVER = {"completed", "failed", "cancelled", "expired"}


def lines(count: int, max_tokens: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [{"role": "user", "content": f"Write about item {i}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(count)
    ]


def native(api: httpx.Client, items: list[dict[str, Any]], poll: float) -> float:
    started = time.perf_counter()
    batch = api.post("/batch", json={"items": items}).raise_for_status().json()
    while batch["status"] not in OVER:
        time.sleep(poll)
        batch = api.get(f"/batch/{batch['id']}").raise_for_status().json()
    output = api.get(f"/batch/{batch['id']}/results").raise_for_status().text
    elapsed = time.perf_counter() - started
    assert batch["status"] == "completed" and output.count("\n") == len(items), batch
    return elapsed


def openai_api(client: OpenAI, items: list[dict[str, Any]], poll: float) -> float:
    payload = b"".join(json.dumps(item).encode() + b"\n" for item in items)
    started = time.perf_counter()
    file = client.files.create(file=("bench.jsonl", payload), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in OVER:
        time.sleep(poll)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id, batch
    output = client.files.content(batch.output_file_id).text
    elapsed = time.perf_counter() - started
    assert output.count("\n") == len(items)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--api", help="use a running API (default: boot a stack)")
    parser.add_argument("--api-key", default="")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the stack
    stack: Stack | None = None
    workdir = tempfile.TemporaryDirectory(prefix="bench-")
    if args.api:
        api_url = args.api
    else:
        print("booting a local stack ...", flush=True)
        stack = start_stack(Path(workdir.name), WORKER_IDLE_EXIT_SECONDS="600")
        api_url = stack.api_url
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    api = httpx.Client(base_url=api_url, headers=headers, timeout=120)
    client = OpenAI(base_url=f"{api_url}/v1", api_key=args.api_key or "unused", timeout=120)
    seconds: dict[str, list[float]] = {"native": [], "openai": []}
    try:
        native(api, lines(40, args.max_tokens, "warm"), args.poll)
        openai_api(client, lines(40, args.max_tokens, "warm"), args.poll)
        for run in range(args.repeat):
            items = lines(args.count, args.max_tokens, f"r{run}")
            seconds["native"].append(native(api, items, args.poll))
            seconds["openai"].append(openai_api(client, items, args.poll))
    finally:
        client.close()
        api.close()
        if stack is not None:
            stack.stop()
        workdir.cleanup()

    rates = {path: args.count / statistics.median(runs) for path, runs in seconds.items()}
    print(f"\n{args.count} chat requests, max_tokens {args.max_tokens}, {args.repeat} run(s)")
    for path, rate in rates.items():
        runs = ", ".join(f"{s:.1f}s" for s in seconds[path])
        print(f"  {path:7s} {rate:8.1f} items/s  ({runs})")
    print(f"  ratio openai/native {rates['openai'] / rates['native']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
