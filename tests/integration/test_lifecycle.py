"""Every way a batch ends, on the real stack, through everything that reads the lifecycle:
`llm-batch watch` (returns within seconds, with the final state's exit code), `llm-batch
status`, `/metrics`, the rates (frozen once final: two reads seconds apart are equal) and
the dashboard's Cancel button in Chromium.

The five endings: completed (a few requests), failed (no valid line), cancelled (a cancel
while it runs), expired (a completion window shorter than the work) and stopped by its
budget (submitted through a second API that knows a box price, with a max_cost_usd one
shard passes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from harness import batches
from harness.stack import Stack, free_port
from kernel.lifecycle import ALL_STATES, FINAL_STATES, exit_code, timestamp_field
from tests.integration.test_dashboard import browser_context  # noqa: F401  (fixture)
from tests.integration.test_operator import cli, samples

pytestmark = pytest.mark.integration

# The CLI's watch must see a final batch and exit within this (it polls every 0.2 s here).
WATCH_RETURNS_WITHIN_S = 5.0


@dataclass
class Ending:
    reason: str  # end_reason
    state: str  # the final state it gives
    code: int  # llm-batch's exit code
    batch: dict[str, Any]


@pytest.fixture(scope="module")
def priced_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second API on the same Temporal, S3 and workers, told the box costs $3600 an hour
    ($1 a GPU second), so that a batch's budget stops it within a shard."""
    port = free_port()
    env = stack.process_env({"API_PORT": str(port), "GPU_PRICE_PER_HOUR": "3600"})
    log = tmp_path_factory.mktemp("priced-api") / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"priced API did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


@pytest.fixture(scope="module")
def endings(stack: Stack, priced_api: str) -> dict[str, Ending]:
    """One batch per way of ending, run at once, each waited for until final."""
    started: dict[str, tuple[str, str, str]] = {}  # reason -> (batch id, state, api)

    def submit(reason: str, state: str, api: str = stack.api_url, **body: Any) -> str:
        response = httpx.post(f"{api}/batch", json=body, timeout=60)
        assert response.status_code == 202, response.text
        batch_id: str = response.json()["id"]
        started[reason] = (batch_id, state, api)
        return batch_id

    submit("completed", "completed", items=batches.chat_items(5, "done", max_tokens=4))
    submit("failed", "failed", items=[{"custom_id": "no-body"}, {"custom_id": "no-body-2"}])
    submit(
        "expired",
        "expired",
        items=batches.chat_items(3000, "exp", max_tokens=16),
        shard_size=100,
        completion_window="4s",
    )
    submit(
        "budget",
        "cancelled",
        api=priced_api,
        items=batches.chat_items(1500, "bud", max_tokens=8),
        shard_size=50,
        max_cost_usd=1.0,
    )
    cancelled = submit(
        "cancelled", "cancelled", items=batches.chat_items(3000, "can", max_tokens=16)
    )
    batches.wait_until(stack, cancelled, lambda b: b["status"] == "in_progress", timeout=120)
    assert stack.http.post(f"/batch/{cancelled}/cancel").status_code == 200

    found: dict[str, Ending] = {}
    for reason, (batch_id, state, _) in started.items():
        batch = batches.wait_terminal(stack, batch_id, timeout=300)
        found[reason] = Ending(reason, state, exit_code(state), batch)
    return found


REASONS = ["completed", "failed", "cancelled", "expired", "budget"]


@pytest.mark.parametrize("reason", REASONS)
def test_the_api_says_final_when_and_why(reason: str, endings: dict[str, Ending]) -> None:
    ending = endings[reason]
    batch = ending.batch
    assert batch["status"] == ending.state, batch
    assert batch["end_reason"] == reason
    assert batch["is_terminal"] is True
    assert batch["ended_at"] == batch[timestamp_field(ending.state)] is not None  # type: ignore[arg-type]
    assert batch["seconds_left"] == 0
    if reason == "budget":
        assert batch["errors"]["message"].startswith("budget reached")
        assert batch["max_cost_usd"] == 1.0 and batch["cost_usd"] > 0
    if reason == "expired":
        assert batch["expired_at"] >= batch["created_at"] + 4


def test_rates_are_frozen_once_final(stack: Stack, endings: dict[str, Ending]) -> None:
    first = {r: batches.get(stack, e.batch["id"]) for r, e in endings.items()}
    time.sleep(2.5)
    later = {r: batches.get(stack, e.batch["id"]) for r, e in endings.items()}
    for reason in REASONS:
        assert later[reason] == first[reason], reason
    for reason in ("completed", "cancelled", "expired", "budget"):
        assert first[reason]["elapsed_seconds"] is not None, reason
        assert first[reason]["requests_per_second"] is not None, reason


@pytest.mark.parametrize("reason", REASONS)
def test_cli_watch_returns_at_once_and_status_exits_with_the_states_code(
    reason: str, stack: Stack, endings: dict[str, Ending], tmp_path: Path
) -> None:
    ending = endings[reason]
    batch_id = ending.batch["id"]
    started = time.monotonic()
    watched = cli(stack, "watch", batch_id, "--interval", "0.2", cwd=tmp_path, timeout=60)
    seconds = time.monotonic() - started
    assert watched.returncode == ending.code, watched.stderr
    assert seconds < WATCH_RETURNS_WITHIN_S, f"watch took {seconds:.1f}s"
    assert f"{batch_id} {ending.state}" in watched.stderr

    status = cli(stack, "status", batch_id, cwd=tmp_path, timeout=60)
    assert status.returncode == ending.code, status.stderr
    text = " ".join(status.stdout.split())
    expected = ending.state if reason == ending.state else f"{ending.state} ({reason})"
    assert f"status {expected}" in text


def test_metrics_count_every_final_state_from_the_batch_status(
    stack: Stack, endings: dict[str, Ending]
) -> None:
    """`llm_batch_batches{status}` has every state as a label, and its final counts are the
    batches' own statuses (an expiry is `expired`, a budget stop `cancelled`), as the API
    lists them."""
    label = "llm_batch_batches"
    for _ in range(10):
        before = samples(stack.http.get("/metrics").text)
        listed = stack.http.get("/batches", params={"limit": 1000}).json()["data"]
        after = samples(stack.http.get("/metrics").text)
        counts = {state: 0 for state in FINAL_STATES}
        for batch in listed:
            if batch["status"] in FINAL_STATES:
                counts[batch["status"]] += 1
        metric = {state: after.get((label, (("status", state),))) for state in FINAL_STATES}
        if before == after and metric == counts:
            break
        time.sleep(1)
    for state in ALL_STATES:
        assert (label, (("status", state),)) in after, state
    assert metric == counts
    assert counts["expired"] >= 1 and counts["cancelled"] >= 2


@pytest.mark.parametrize("reason", REASONS)
def test_dashboard_disables_cancel_on_every_final_state(
    reason: str,
    stack: Stack,
    endings: dict[str, Ending],
    browser_context: Any,  # noqa: F811
) -> None:
    ending = endings[reason]
    page = browser_context().new_page()
    page.goto(f"{stack.web_url}/#batch={ending.batch['id']}")
    expect(page.locator("#detail-id")).to_have_text(ending.batch["id"])
    expect(page.locator("#detail-status")).to_contain_text(ending.state)
    if reason != ending.state:
        expect(page.locator("#detail-status")).to_contain_text(f"({reason})")
    expect(page.locator("#batch-cancel")).to_be_disabled()
    expect(page.locator("#download-output")).to_have_text("Download output")
