#!/usr/bin/env python3
"""Smoke test of a running deployment, over HTTP only (standard library only).

/health reports "ok", /queues answers for the cpu and gpu task queues, and one small batch runs
to a terminal status with every custom_id in its results exactly once. The routes and shapes
checked are those of the README's API section.

Run through scripts/container_smoke.sh, which CI (.github/workflows/ci-minimal-image.yml) and
docs/images.md call: `scripts/container_smoke.sh BASE_URL [API_KEY]`. On any failure it prints
one line "container_smoke: FAIL: <reason>" to stderr and exits 1; a usage error exits 2. The
whole run is bounded by SMOKE_TIMEOUT seconds.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from typing import Any, NoReturn

PROG = "container_smoke"

HEALTH_PATH = "/health"
QUEUES_PATH = "/queues"
BATCH_PATH = "/batch"  # POST to create, GET /batch/{id}
RESULTS_SUFFIX = "/results"  # GET /batch/{id}/results (JSONL)
EXPECTED_QUEUES = ("cpu", "gpu")
# `expired` is OpenAI's status for a batch past its completion window: accepted as terminal
# should the API report it, never required.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired"})

SETTINGS = {  # name: default
    "SMOKE_TIMEOUT": 180,
    "SMOKE_HEALTH_WAIT": 60,
    "SMOKE_POLL_INTERVAL": 2,
    "SMOKE_REQUEST_TIMEOUT": 15,
    "SMOKE_ITEMS": 3,
    "SMOKE_MAX_TOKENS": 8,
}


def usage() -> str:
    items, max_tokens = SETTINGS["SMOKE_ITEMS"], SETTINGS["SMOKE_MAX_TOKENS"]
    return f"""Usage: scripts/container_smoke.sh BASE_URL [API_KEY]

Smoke-tests a running deployment: GET /health (status "ok"), GET /queues (cpu and gpu),
POST /batch with SMOKE_ITEMS items (max_tokens SMOKE_MAX_TOKENS), polls GET /batch/{{id}}
until it ends, then checks GET /batch/{{id}}/results has every custom_id exactly once.

  BASE_URL   e.g. http://127.0.0.1:8000
  API_KEY    bearer token; defaults to $API_KEY from the environment (none: no auth header)

Environment (defaults in brackets):
  SMOKE_TIMEOUT          total time budget in seconds [180]
  SMOKE_HEALTH_WAIT      how long /health may stay "degraded" while services start [60]
  SMOKE_POLL_INTERVAL    seconds between polls [2]
  SMOKE_REQUEST_TIMEOUT  per-request limit in seconds [15]
  SMOKE_ITEMS            requests in the batch [{items}]
  SMOKE_MAX_TOKENS       max_tokens for each request [{max_tokens}]
  SMOKE_TRACE=1          print every request
  PYTHON                 interpreter the .sh wrapper runs [python3]

Exit status: 0 when every check passed, 1 on a failed check (one-line reason on stderr),
2 on a usage error.
"""


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def fail(reason: str) -> NoReturn:
    reason = " ".join(reason.splitlines())
    print(f"{PROG}: FAIL: {reason}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def usage_error(message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    print(usage(), file=sys.stderr, end="")
    raise SystemExit(2)


@dataclass
class Response:
    status: int  # 0: no HTTP answer at all
    body: bytes = b""
    error: str = ""  # why there was no answer

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8", errors="replace"))


def error_detail(body: bytes) -> str:
    """The message of an error answer ({"error": {"message": ...}}) or the start of the body."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:200] or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return f"{error.get('type', 'error')}: {error['message']}"[:300]
    if isinstance(data, dict) and "detail" in data:
        return json.dumps(data["detail"])[:300]
    return json.dumps(data)[:200]


def unhealthy_detail(data: dict[str, Any]) -> str:
    """Names every dependency that is not ok, wherever the API nests them."""
    problems: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            state = node.get("status")
            if path and isinstance(state, str) and state != "ok":
                message = node.get("message") or node.get("error") or ""
                problems.append(f"{path}={state}" + (f" ({message})" if message else ""))
            for key, value in node.items():
                if isinstance(value, (dict, list)):
                    walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(data, "")
    detail = "; ".join(problems) if problems else json.dumps(data)[:200]
    return f"status {data.get('status')!r}: {detail}"[:400]


class Smoke:
    def __init__(self, base_url: str, api_key: str, settings: dict[str, int]) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.settings = settings
        self.trace = os.environ.get("SMOKE_TRACE") == "1"
        self.started = time.monotonic()
        self.deadline = self.started + settings["SMOKE_TIMEOUT"]
        self.phase = "start"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def http(self, method: str, path: str, body: Any = None) -> Response:
        left = self.remaining()
        if left <= 0:
            fail(f"timed out after {self.settings['SMOKE_TIMEOUT']}s ({self.phase})")
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        if self.trace:
            log(f"> {method} {self.base_url}{path}")
        timeout = min(left, self.settings["SMOKE_REQUEST_TIMEOUT"])
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return Response(answer.status, answer.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, error.read())
        except urllib.error.URLError as error:
            return Response(0, error=str(error.reason))
        except (OSError, ValueError) as error:
            return Response(0, error=str(error) or type(error).__name__)

    def request(self, what: str, method: str, path: str, body: Any = None) -> Response:
        response = self.http(method, path, body)
        if response.status == 0:
            fail(f"{what}: no answer from {self.base_url}: {response.error}")
        return response

    def expect(self, what: str, response: Response, *codes: int) -> Any:
        """The JSON body of an answer with one of `codes`; fails otherwise."""
        if response.status not in codes:
            detail = error_detail(response.body)
            if response.status in (401, 403):
                fail(f"{what}: HTTP {response.status} (wrong or missing API key?): {detail}")
            expected = " ".join(str(code) for code in codes)
            fail(f"{what}: HTTP {response.status}, expected {expected}: {detail}")
        try:
            return response.json()
        except ValueError as exc:
            fail(f"{what}: body is not JSON ({exc})")

    def check_health(self) -> None:
        self.phase = f"waiting for {HEALTH_PATH} to report ok"
        started = time.monotonic()
        health_deadline = started + self.settings["SMOKE_HEALTH_WAIT"]
        interval = self.settings["SMOKE_POLL_INTERVAL"]
        while True:
            response = self.http("GET", HEALTH_PATH)
            if response.status == 200:
                try:
                    data = response.json()
                except ValueError as exc:
                    reason = f"body is not JSON ({exc})"
                else:
                    if not isinstance(data, dict):
                        reason = "body is not a JSON object"
                    elif data.get("status") == "ok":
                        log("health ok")
                        return
                    else:
                        reason = unhealthy_detail(data)
            elif response.status:
                reason = f"HTTP {response.status}: {error_detail(response.body)}"
                if response.status in (401, 403, 404):
                    fail(f"GET {HEALTH_PATH}: {reason}")
            else:
                reason = f"no answer: {response.error}"
            now = time.monotonic()
            if now >= health_deadline or self.remaining() <= interval:
                fail(f"GET {HEALTH_PATH} not ok after {int(now - started)}s: {reason}")
            time.sleep(interval)

    def check_queues(self) -> None:
        self.phase = f"GET {QUEUES_PATH}"
        what = f"GET {QUEUES_PATH}"
        data = self.expect(what, self.request(what, "GET", QUEUES_PATH), 200)
        queues = data.get("queues") if isinstance(data, dict) else None
        if not isinstance(queues, dict):
            fail(f"{what}: no 'queues' object in the answer")
        missing = [name for name in EXPECTED_QUEUES if name not in queues]
        if missing:
            fail(f"{what}: queue(s) {', '.join(missing)} missing; got {sorted(queues)}")

        def brief(queue: Any) -> str:
            if not isinstance(queue, dict):
                return json.dumps(queue)[:80]
            parts = [
                f"{key} {value}"
                for key, value in queue.items()
                if isinstance(value, (int, float, str))
            ]
            worker = queue.get("worker")
            if isinstance(worker, dict) and worker.get("state"):
                parts.append(f"{worker.get('program', 'worker')} {worker['state']}")
            return ", ".join(parts)[:160]

        log("queues " + "; ".join(f"{name}: {brief(queues[name])}" for name in EXPECTED_QUEUES))

    def create_batch(self, prefix: str) -> str:
        self.phase = f"POST {BATCH_PATH}"
        what = f"POST {BATCH_PATH}"
        items = self.settings["SMOKE_ITEMS"]
        body = {
            "items": [
                {
                    "custom_id": f"{prefix}-{index}",
                    "messages": [{"role": "user", "content": f"Say hello, number {index}."}],
                }
                for index in range(1, items + 1)
            ],
            "defaults": {"max_tokens": self.settings["SMOKE_MAX_TOKENS"]},
            "metadata": {"source": "container_smoke"},
        }
        data = self.expect(what, self.request(what, "POST", BATCH_PATH, body), 202, 201, 200)
        batch_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(batch_id, str) or not batch_id:
            fail(f"{what}: no batch id in the answer: {json.dumps(data)[:200]}")
        return batch_id

    def wait_for_batch(self, batch_id: str) -> None:
        """Polls until the batch ends; fails unless it completed with every request."""
        self.phase = f"waiting for batch {batch_id}"
        path = f"{BATCH_PATH}/{batch_id}"
        items = self.settings["SMOKE_ITEMS"]
        interval = self.settings["SMOKE_POLL_INTERVAL"]
        last = None
        while True:
            response = self.request(f"GET {path}", "GET", path)
            data = self.expect(f"GET {path}", response, 200)
            if not isinstance(data, dict) or not isinstance(data.get("status"), str):
                fail(f"GET {path}: no status in the answer: {json.dumps(data)[:200]}")
            status = data["status"]
            counts = data.get("request_counts") or {}
            total, completed, failed = (
                counts.get(k, "?") for k in ("total", "completed", "failed")
            )
            line = (status, total, completed, failed)
            if line != last:
                log(
                    f"batch {batch_id}: status {status} "
                    f"(total/completed/failed: {total} {completed} {failed})"
                )
                last = line
            if status in TERMINAL_STATUSES:
                break
            if self.remaining() <= interval:
                fail(
                    f"batch {batch_id} still '{status}' after {self.settings['SMOKE_TIMEOUT']}s "
                    f"(total/completed/failed: {total} {completed} {failed})"
                )
            time.sleep(interval)
        if status != "completed":
            fail(
                f"batch {batch_id} ended '{status}' (total {total}, completed {completed}, "
                f"failed {failed}): {error_detail(response.body)}"
            )
        if (total, completed, failed) != (items, items, 0):
            fail(
                f"batch {batch_id} completed with request_counts total {total}, completed "
                f"{completed}, failed {failed}; expected {items}/{items}/0"
            )

    def check_results(self, batch_id: str, prefix: str) -> None:
        path = f"{BATCH_PATH}/{batch_id}{RESULTS_SUFFIX}"
        self.phase = f"GET {path}"
        what = f"GET {path}"
        response = self.request(what, "GET", path)
        if response.status != 200:
            self.expect(what, response, 200)
        expected = {f"{prefix}-{index}" for index in range(1, self.settings["SMOKE_ITEMS"] + 1)}
        seen: Counter[str] = Counter()
        bad = []
        text = response.body.decode("utf-8", errors="replace")
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                fail(f"{what}: results line {number} is not JSON: {raw.strip()[:120]}")
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str):
                fail(f"{what}: results line {number} has no custom_id: {raw.strip()[:120]}")
            seen[custom_id] += 1
            answer = line.get("response") or {}
            if line.get("error") or answer.get("status_code") != 200:
                detail = line.get("error") or f"status_code {answer.get('status_code')!r}"
                bad.append(f"{custom_id}: {json.dumps(detail)[:120]}")
        problems = []
        missing = sorted(expected - set(seen))
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        duplicated = sorted(cid for cid, count in seen.items() if count > 1)
        if duplicated:
            problems.append(f"duplicated {', '.join(f'{cid} x{seen[cid]}' for cid in duplicated)}")
        unexpected = sorted(set(seen) - expected)
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected[:5])}")
        if bad:
            problems.append(f"failed requests {'; '.join(bad[:3])}")
        if problems:
            fail(f"{what}: {'; '.join(problems)}")
        log(f"results: {len(expected)} custom_ids, each exactly once")

    def run(self) -> None:
        log(f"smoke test of {self.base_url} (budget {self.settings['SMOKE_TIMEOUT']}s)")
        self.check_health()
        self.check_queues()
        prefix = f"smoke-{int(time.time())}-{os.getpid()}"
        batch_id = self.create_batch(prefix)
        items = self.settings["SMOKE_ITEMS"]
        log(f"created batch {batch_id} with {items} items")
        self.wait_for_batch(batch_id)
        self.check_results(batch_id, prefix)
        seconds = int(time.monotonic() - self.started)
        print(f"{PROG}: OK: batch {batch_id}, {items}/{items} results in {seconds}s", flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(usage(), end="")
        return 0
    if not argv or not argv[0]:
        usage_error("missing BASE_URL")
    if len(argv) > 2:
        usage_error("too many arguments")
    base_url = argv[0].rstrip("/")
    api_key = argv[1] if len(argv) > 1 and argv[1] else os.environ.get("API_KEY", "")
    if not re.match(r"^https?://[^/]+", base_url):
        usage_error(f"BASE_URL must start with http:// or https://: {base_url}")
    settings = {}
    for name, default in SETTINGS.items():
        value = os.environ.get(name) or str(default)
        if not re.fullmatch(r"[1-9][0-9]*", value):
            usage_error(f"{name} must be a positive integer, got '{value}'")
        settings[name] = int(value)
    try:
        Smoke(base_url, api_key, settings).run()
    except KeyboardInterrupt:
        fail("interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
