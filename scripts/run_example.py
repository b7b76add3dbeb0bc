"""Submit a JSONL file as a batch to the running API, follow it, show where the output is.

python scripts/run_example.py examples/sample_batch.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel.config import load_settings_or_exit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="JSONL file of request lines")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--show", type=int, default=3, help="output lines to print")
    args = parser.parse_args()

    settings = load_settings_or_exit()
    headers = {}
    if settings.API_KEY:
        headers["Authorization"] = f"Bearer {settings.API_KEY.get_secret_value()}"
    host = "127.0.0.1" if settings.API_HOST in ("0.0.0.0", "::") else settings.API_HOST
    base_url = f"http://{host}:{settings.API_PORT}"
    api = httpx.Client(base_url=base_url, headers=headers, timeout=60)

    items = [json.loads(line) for line in args.input.read_text().splitlines() if line.strip()]
    response = api.post("/batch", json={"items": items, "defaults": {"max_tokens": 32}})
    if response.status_code != 202:
        print(f"error: POST /batch answered {response.status_code}: {response.text}")
        return 1
    batch = response.json()
    started = time.monotonic()
    workers = batch["workers"]
    print(f"batch {batch['id']}: {len(items)} line(s) from {args.input}; workers {workers}")
    while not batch["is_terminal"]:
        if time.monotonic() - started > args.timeout:
            print(f"error: batch still {batch['status']} after {args.timeout:g}s")
            return 1
        time.sleep(0.5)
        batch = api.get(f"/batch/{batch['id']}").json()
    counts = batch["request_counts"]
    print(
        f"{batch['status']} in {time.monotonic() - started:.1f}s: {counts['completed']} completed, "
        f"{counts['failed']} failed of {counts['total']}"
    )
    print(f"output: s3://{settings.MINIO_BUCKET}/{batch['output_key']}")
    print(f"        {base_url}/batch/{batch['id']}/results")
    print(f"errors: s3://{settings.MINIO_BUCKET}/{batch['error_key']}")
    print(f"        {base_url}/batch/{batch['id']}/errors")
    output = api.get(f"/batch/{batch['id']}/results").text.splitlines()
    print(f"first {min(args.show, len(output))} output line(s):")
    for line in output[: args.show]:
        result = json.loads(line)
        body = result["response"]["body"]
        choice = body["choices"][0]
        text = choice.get("message", {}).get("content", choice.get("text", ""))
        print(f"  {result['custom_id']}: {text!r}")
    for line in api.get(f"/batch/{batch['id']}/errors").text.splitlines()[: args.show]:
        error = json.loads(line)
        print(f"  error {error['custom_id']}: {error['error']['message']}")
    return 0 if batch["status"] == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
