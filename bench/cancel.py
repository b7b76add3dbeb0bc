"""How fast a cancel shows and takes effect, and what it keeps.

    python bench/cancel.py [-n 4000] [--shard-size 200] [--max-tokens 32] [--repeat 1]

Boots its own stack (local mode, tiny model, free ports, temporary folder) unless --api points
at a running one. Per run: submit N chat requests, wait until the first shard has finished,
cancel, then measure

  visible    cancel answered → `GET /batch/{id}` says cancelling (or later)
  cancelled  cancel answered → the batch is cancelled
  kept       output lines of the cancelled batch; `partial` of them come from shards that
             were running when the cancel came (their shard has fewer lines than its size)

Prints one line per run and writes the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.stack import start_stack  # noqa: E402


def items(count: int, max_tokens: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "messages": [{"role": "user", "content": f"Write about item {i}."}],
            "max_tokens": max_tokens,
        }
        for i in range(count)
    ]


def poll(http: httpx.Client, batch_id: str, done: Any, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch: dict[str, Any] = http.get(f"/batch/{batch_id}").json()
        if done(batch):
            return batch
        time.sleep(0.05)
    raise SystemExit(f"batch {batch_id} stuck")


def one_run(http: httpx.Client, count: int, shard_size: int, max_tokens: int, tag: str) -> dict:
    answer = http.post(
        "/batch", json={"items": items(count, max_tokens, tag), "shard_size": shard_size}
    )
    answer.raise_for_status()
    batch_id = answer.json()["id"]
    poll(http, batch_id, lambda b: b["request_counts"]["completed"] >= shard_size)
    started = time.monotonic()
    cancel = http.post(f"/batch/{batch_id}/cancel")
    cancel.raise_for_status()
    answered = time.monotonic()
    poll(http, batch_id, lambda b: b["status"] in ("cancelling", "cancelled"))
    visible = time.monotonic() - answered
    done = poll(http, batch_id, lambda b: b["is_terminal"])
    cancelled = time.monotonic() - answered
    lines = [json.loads(x) for x in http.get(f"/batch/{batch_id}/results").text.splitlines()]
    per_shard = Counter(int(line["custom_id"].rsplit("-", 1)[1]) // shard_size for line in lines)
    partial = sum(n for n in per_shard.values() if n < shard_size)
    return {
        "status": done["status"],
        "cancel_call_s": round(answered - started, 3),
        "visible_s": round(visible, 3),
        "cancelled_s": round(cancelled, 3),
        "kept": len(lines),
        "partial": partial,
        "completed_count": done["request_counts"]["completed"],
        "unique": len({line["custom_id"] for line in lines}) == len(lines),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=4000)
    parser.add_argument("--shard-size", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--api", help="base URL of a running API (default: boot a stack)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    stack = None
    if args.api is None:
        base = Path(tempfile.mkdtemp(prefix="bench-cancel-"))
        stack = start_stack(base, LLAMA_CTX_PER_SLOT="512")
        api = stack.api_url
    else:
        api = args.api
    runs = []
    try:
        with httpx.Client(base_url=api, timeout=60) as http:
            for run in range(args.repeat):
                figures = one_run(http, args.n, args.shard_size, args.max_tokens, f"c{run}")
                print(json.dumps(figures), flush=True)
                runs.append(figures)
    finally:
        if stack is not None:
            stack.stop()
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
