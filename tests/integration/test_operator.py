"""What an operator uses, against the real stack: the `llm-batch` CLI, the API's /metrics
and a worker's Temporal SDK metrics endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import batches
from harness.stack import REPO_ROOT, Stack, free_port
from kernel.config import Settings

pytestmark = pytest.mark.integration


def cli(
    stack: Stack, *args: str, cwd: Path, url: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m cli` (what the `llm-batch` console script runs) from a folder without .env."""
    env = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    env = {k: v for k, v in env.items() if not k.startswith("LLM_BATCH_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["LLM_BATCH_URL"] = url or stack.api_url
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_jsonl(path: Path, items: list[Any]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_cli_submits_watches_and_fetches_a_batch(stack: Stack, tmp_path: Path) -> None:
    items: list[Any] = batches.chat_items(24, prefix="cli", max_tokens=4)
    items.append({"messages": [{"role": "user", "content": "no id"}]})
    source = write_jsonl(tmp_path / "prompts.jsonl", items)

    run = cli(
        stack, "submit", str(source), "--defaults", '{"temperature": 0}', "--watch", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    # Not a terminal: one progress line per change on stderr, the summary on stdout.
    assert "submitted batch_" in run.stderr
    assert "25/25 done (1 failed)" in run.stderr
    assert "req/s" in run.stderr and "left" in run.stderr
    batch_id = run.stderr.split("submitted ", 1)[1].split()[0]
    assert "completed" in run.stdout and "24 completed, 1 failed of 25" in run.stdout

    status = cli(stack, "--json", "status", batch_id, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    batch = json.loads(status.stdout)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 25, "completed": 24, "failed": 1}
    assert batch["requests_per_second"] > 0 and batch["tokens_per_second"] > 0
    assert batch["seconds_left"] == 0
    assert batch["cost_usd"] is None  # no GPU_PRICE_PER_HOUR on the test stack

    listed = cli(stack, "--json", "list", "--limit", "50", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert batch_id in {b["id"] for b in json.loads(listed.stdout)}
    table = cli(stack, "list", cwd=tmp_path)
    assert table.returncode == 0 and batch_id[:12] in table.stdout

    output = tmp_path / "out.jsonl"
    fetched = cli(stack, "results", batch_id, "-o", str(output), cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    batches.assert_exactly_once(lines, {f"cli{i}" for i in range(24)})
    errors = cli(stack, "errors", batch_id, cwd=tmp_path)
    assert errors.returncode == 0
    (error,) = [json.loads(line) for line in errors.stdout.splitlines()]
    assert error["line"] == 25 and "custom_id" in error["error"]["message"]

    health = cli(stack, "--json", "health", cwd=tmp_path)
    assert health.returncode == 0, health.stdout
    assert json.loads(health.stdout)["status"] == "ok"


def test_cli_cancel_exits_non_zero_and_keeps_results(stack: Stack, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "big.jsonl", batches.chat_items(3000, prefix="c", max_tokens=8))
    submitted = cli(stack, "--json", "submit", str(source), "--shard-size", "50", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["id"]
    batches.wait_until(stack, batch_id, lambda b: b["request_counts"]["completed"] > 0)

    cancelled = cli(stack, "cancel", batch_id, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{batch_id} cancelling" in cancelled.stdout
    watched = cli(stack, "watch", batch_id, "--interval", "0.5", cwd=tmp_path)
    assert watched.returncode == 3, (watched.stdout, watched.stderr)
    assert "cancelled" in watched.stdout

    again = cli(stack, "cancel", batch_id, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"error: POST /batch/{batch_id}/cancel: HTTP 409: batch {batch_id} is already cancelled"
    )
    done = batches.get(stack, batch_id)
    output = batches.results(stack, batch_id)
    assert len(output) == done["request_counts"]["completed"] < 3000


def test_cli_says_in_one_line_when_the_api_is_unreachable(stack: Stack, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("status", "batch_x"), ("list",), ("health",)):
        run = cli(stack, *args, cwd=tmp_path, url=url)
        assert run.returncode == 4, args
        assert run.stdout == ""
        (line,) = run.stderr.splitlines()
        assert line.startswith(f"error: cannot reach the API at {url} (")
    missing = cli(stack, "status", "batch_nope", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "error: GET /batch/batch_nope: HTTP 404: no batch with id 'batch_nope'"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "prompt": "x"}\n{oops\n')
    refused = cli(stack, "submit", str(bad), cwd=tmp_path)
    assert refused.returncode == 2
    assert f"{bad}:2: not JSON" in " ".join(refused.stderr.split())


def test_metrics_report_batches_queues_and_requests(stack: Stack) -> None:
    batch = batches.submit(stack, items=batches.chat_items(12, prefix="m", max_tokens=3))
    batches.wait_terminal(stack, batch["id"], timeout=120)
    batches.get(stack, batch["id"])

    response = stack.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)
    assert found[("llm_batch_temporal_up", ())] == 1
    assert found[("llm_batch_batches", (("status", "completed"),))] >= 1
    assert found[("llm_batch_requests_total", (("outcome", "completed"),))] >= 12
    assert found[("llm_batch_tokens_total", (("direction", "output"),))] >= 36
    assert found[("llm_batch_gpu_seconds_total", ())] > 0
    for queue, name in (("cpu", stack.env["CPU_TASK_QUEUE"]), ("gpu", stack.env["GPU_TASK_QUEUE"])):
        labels = (("queue", queue), ("task_queue", name))
        assert ("llm_batch_queue_backlog", labels) in found
        assert ("llm_batch_queue_live_pollers", labels) in found
    route = (("method", "GET"), ("route", "/batch/{batch_id}"), ("status", "200"))
    assert found[("llm_batch_http_request_duration_seconds_count", route)] >= 1
    assert "llm_batch_workers_started_total" in response.text

    # Counters only grow between scrapes.
    again = samples(stack.http.get("/metrics").text)
    key = ("llm_batch_requests_total", (("outcome", "completed"),))
    assert again[key] >= found[key]


def test_worker_exports_temporal_sdk_metrics(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    env = stack.process_env(
        {
            "CPU_TASK_QUEUE": f"metrics-{os.getpid()}",
            "WORKER_CPU_METRICS_PORT": str(port),
            "WORKER_IDLE_EXIT_SECONDS": "0",
        }
    )
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "--queue", "cpu"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                text = ""
            if "temporal_" in text and "poll" in text:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.5)
        names = {family.name for family in text_string_to_metric_families(text)}
        assert any(name.startswith("temporal_") for name in names), text[:500]
        assert "temporal_worker_task_slots_available" in names, sorted(names)
        # Prometheus conventions: durations in seconds, named so.
        assert "temporal_request_latency_seconds" in names, sorted(names)
    finally:
        os.kill(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        log.close()
    assert worker.returncode == 0
