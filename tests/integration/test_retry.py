"""Retry on the real stack: a batch with requests llama-server refuses (a negative
max_tokens: HTTP 400, the same every time) and two invalid input lines, cancelled half way;
its retry sends exactly the failed and unfinished requests, runs to the end, and the merged
results of the chain hold every custom_id exactly once. The same for a batch created through
/v1/batches; the CLI round trip; the dashboard's Retry button; the refusals (409, 404, 410);
a batch cancelled while validating accounts for every input line; GET /v1/batches refuses
unknown parameters.

The retry round trip (POST /batch/{id}/retry to the retry's end) is printed (`-s`).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client

from harness import batches
from harness.stack import Stack
from tests.integration.test_dashboard import browser_context  # noqa: F401  (fixture)
from tests.integration.test_operator import cli

pytestmark = pytest.mark.integration

LINES = 1000
FAIL_EVERY = 25  # every 25th request asks for max_tokens -5: llama-server answers 400
INVALID: list[dict[str, Any]] = [
    {"custom_id": "rt-bad-1", "body": 5},
    {"custom_id": "rt-bad-2", "url": "/v1/nope"},
]


def _items() -> list[dict[str, Any]]:
    items = batches.chat_items(LINES, "rt", max_tokens=16)
    for i in range(0, LINES, FAIL_EVERY):
        items[i]["max_tokens"] = -5
    return items


def _ids(lines: list[dict[str, Any]]) -> Counter[str]:
    return Counter(line["custom_id"] for line in lines)


def _codes(lines: list[dict[str, Any]]) -> Counter[str]:
    return Counter(line["error"]["code"] for line in lines)


def _retry(stack: Stack, batch_id: str, **body: Any) -> Any:
    return stack.http.post(f"/batch/{batch_id}/retry", json=body or None)


@pytest.fixture(scope="module")
def chain(stack: Stack) -> dict[str, Any]:
    """The cancelled original and its retry, run to its end; the round trip measured."""
    original = batches.submit(
        stack,
        items=_items() + INVALID,
        shard_size=100,
        metadata={"project": "retry-test"},
        defaults={"temperature": 0},
    )["id"]
    batches.wait_until(stack, original, lambda b: b["request_counts"]["completed"] >= 100, 300)
    assert stack.http.post(f"/batch/{original}/cancel").status_code == 200
    ended = batches.wait_terminal(stack, original, timeout=600)
    started = time.monotonic()
    response = _retry(stack, original)
    assert response.status_code == 202, response.text
    retry = response.json()
    finished = batches.wait_terminal(stack, retry["id"], timeout=600)
    seconds = time.monotonic() - started
    sent = retry["retry"]["failed"] + retry["retry"]["unfinished"]
    print(
        f"\nretry round trip: {sent} line(s) ({retry['retry']['failed']} failed, "
        f"{retry['retry']['unfinished']} unfinished) in {seconds:.1f}s "
        f"(POST /batch/{{id}}/retry to {finished['status']}; {sent / seconds:.0f} lines/s)"
    )
    return {"original": ended, "retry": retry, "finished": finished, "seconds": seconds}


def test_the_original_was_cancelled_half_way_with_failures(
    stack: Stack, chain: dict[str, Any]
) -> None:
    original = chain["original"]
    assert original["status"] == "cancelled"
    codes = _codes(batches.errors(stack, original["id"]))
    assert codes["llama_http_400"] > 0, codes
    assert codes["batch_cancelled"] > 0, "the batch ran every request before the cancel"
    assert codes["invalid_request_line"] == len(INVALID)


def test_the_retry_sends_exactly_the_failed_and_unfinished_lines(
    stack: Stack, chain: dict[str, Any]
) -> None:
    original, retry = chain["original"], chain["retry"]
    errors = batches.errors(stack, original["id"])
    codes = _codes(errors)
    assert retry["retry"] == {
        "of": original["id"],
        "failed": codes["llama_http_400"],
        "unfinished": codes["batch_cancelled"],
        "left_out": {"invalid_request_line": len(INVALID)},
        "left_out_reason": retry["retry"]["left_out_reason"],
    }
    assert "fail the same way" in retry["retry"]["left_out_reason"]
    resent = {e["custom_id"] for e in errors if e["error"]["code"] != "invalid_request_line"}
    finished = chain["finished"]
    assert finished["status"] == "completed"
    assert finished["request_counts"]["total"] == len(resent)
    done = batches.results(stack, retry["id"]) + batches.errors(stack, retry["id"])
    assert _ids(done) == Counter(resent)
    # Its own failures are the requests llama-server refuses, again.
    again = {e["custom_id"] for e in batches.errors(stack, retry["id"])}
    assert again == {f"rt{i}" for i in range(0, LINES, FAIL_EVERY)} & resent


def test_the_retry_keeps_the_settings_and_is_linked_both_ways(
    stack: Stack, chain: dict[str, Any]
) -> None:
    original_id, retry_id = chain["original"]["id"], chain["retry"]["id"]
    retry = batches.get(stack, retry_id)
    assert retry["retry_of"] == original_id
    assert retry["metadata"] == {"project": "retry-test", "retry_of": original_id}
    assert retry["endpoint"] == chain["original"]["endpoint"]
    assert retry_id in batches.get(stack, original_id)["retried_by"]
    listed = stack.http.get("/v1/batches/" + retry_id).json()
    assert listed["metadata"]["retry_of"] == original_id


@pytest.mark.parametrize("end", ["original", "finished"])
def test_merged_results_hold_every_custom_id_once(
    stack: Stack, chain: dict[str, Any], end: str
) -> None:
    batch_id = chain[end]["id"]
    response = stack.http.get(f"/batch/{batch_id}/results?merged=true")
    assert response.status_code == 200
    assert response.headers["x-partial"] == "false"
    assert set(response.headers["x-batch-chain"].split(",")) >= {
        chain["original"]["id"],
        chain["retry"]["id"],
    }
    merged = [json.loads(line) for line in response.text.splitlines()]
    merged_errors = batches.jsonl(stack, f"/batch/{batch_id}/errors?merged=true")
    valid = {f"rt{i}" for i in range(LINES)}
    failing = {f"rt{i}" for i in range(0, LINES, FAIL_EVERY)}
    assert _ids(merged) == Counter(valid - failing)
    assert _ids(merged_errors) == Counter(failing | {item["custom_id"] for item in INVALID})
    assert _codes(merged_errors) == Counter(
        {"llama_http_400": len(failing), "invalid_request_line": len(INVALID)}
    )


def test_refusals(stack: Stack, chain: dict[str, Any]) -> None:
    # Nothing left: the retry completed and has no unfinished line.
    nothing = _retry(stack, chain["retry"]["id"], failed=False, unfinished=True)
    assert nothing.status_code == 409
    assert "no unfinished line to retry" in nothing.json()["error"]["message"]
    assert _retry(stack, "batch_" + "0" * 32).status_code == 404
    running = batches.submit(stack, items=batches.chat_items(300, "rt-run"))["id"]
    refused = _retry(stack, running)
    assert refused.status_code == 409, refused.text
    assert "ended" in refused.json()["error"]["message"]
    batches.wait_terminal(stack, running)
    assert stack.http.delete(f"/batch/{running}").status_code == 200
    assert _retry(stack, running).status_code == 410


def _split_started(stack: Stack, batch_id: str) -> bool:
    """Whether the batch's split activity runs (a pending activity that has started: the
    history records its start only when it ends)."""

    async def look() -> bool:
        client = await Client.connect(stack.env["TEMPORAL_ADDRESS"])
        description = await client.get_workflow_handle(batch_id).describe()
        pending = description.raw_description.pending_activities
        return any(a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED for a in pending)

    return asyncio.run(look())


def test_a_batch_cancelled_while_validating_accounts_for_every_line(stack: Stack) -> None:
    """Cancelled while its split runs (100,000 lines from an uploaded file): every line is a
    batch_cancelled error line, and a retry sends them all again."""
    count = 100_000
    items = batches.chat_items(count, "val")
    file_id = _upload(stack, items)
    batch_id = batches.submit(stack, input_key=f"files/{file_id}")["id"]
    deadline = time.monotonic() + 60
    while not _split_started(stack, batch_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stack.http.post(f"/batch/{batch_id}/cancel").status_code == 200
    ended = batches.wait_terminal(stack, batch_id)
    assert ended["shard_count"] == 0, "the split ended before the cancel"
    assert ended["status"] == "cancelled"
    assert ended["request_counts"] == {"total": count, "completed": 0, "failed": count}
    errors = batches.errors(stack, batch_id)
    assert _ids(errors) == Counter(item["custom_id"] for item in items)
    assert _codes(errors) == Counter({"batch_cancelled": count})
    retry = _retry(stack, batch_id, failed=False)
    assert retry.status_code == 202, retry.text
    assert retry.json()["retry"]["unfinished"] == count
    stack.http.post(f"/batch/{retry.json()['id']}/cancel")
    again = batches.wait_terminal(stack, retry.json()["id"])
    assert again["request_counts"]["total"] == count


def _upload(stack: Stack, lines: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    response = stack.http.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": ("input.jsonl", io.BytesIO(data), "application/jsonl")},
    )
    assert response.status_code == 200, response.text
    file_id: str = response.json()["id"]
    return file_id


@pytest.fixture(scope="module")
def openai_batch(stack: Stack) -> dict[str, Any]:
    """A /v1 batch with one request llama-server refuses, ended."""
    lines = [
        {
            "custom_id": f"v1-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [{"role": "user", "content": f"q {i}"}],
                "max_tokens": -5 if i == 2 else 8,
            },
        }
        for i in range(6)
    ]
    body = {
        "input_file_id": _upload(stack, lines),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"via": "openai"},
    }
    response = stack.http.post("/v1/batches", json=body)
    assert response.status_code == 200, response.text
    return batches.wait_terminal(stack, response.json()["id"])


def test_a_v1_batch_is_retried_and_seen_through_v1(
    stack: Stack, openai_batch: dict[str, Any]
) -> None:
    assert openai_batch["status"] == "completed"
    response = _retry(stack, openai_batch["id"])
    assert response.status_code == 202, response.text
    assert response.json()["retry"]["failed"] == 1
    retry_id = response.json()["id"]
    batches.wait_terminal(stack, retry_id)
    seen = stack.http.get(f"/v1/batches/{retry_id}").json()
    assert seen["status"] == "completed"
    assert seen["metadata"] == {"via": "openai", "retry_of": openai_batch["id"]}
    assert seen["completion_window"] == "24h"
    assert seen["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    merged = batches.jsonl(stack, f"/batch/{retry_id}/results?merged=true")
    merged_errors = batches.jsonl(stack, f"/batch/{retry_id}/errors?merged=true")
    assert _ids(merged + merged_errors) == Counter(f"v1-{i}" for i in range(6))
    assert [e["custom_id"] for e in merged_errors] == ["v1-2"]


def test_v1_batches_listing_refuses_unknown_parameters(stack: Stack) -> None:
    response = stack.http.get("/v1/batches", params={"limit": 2, "bogus": 1, "statu": "x"})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "bogus" in message and "statu" in message
    assert stack.http.get("/v1/batches", params={"limit": 2}).status_code == 200


def test_cli_retry_round_trip(stack: Stack, chain: dict[str, Any], tmp_path: Path) -> None:
    original = chain["original"]["id"]
    retried = cli(stack, "retry", original, "--failed", "--watch", cwd=tmp_path, timeout=300)
    assert retried.returncode == 0, retried.stderr
    assert f"(retry of {original})" in retried.stderr
    assert "left out: 2 invalid_request_line" in retried.stderr
    new_id = retried.stderr.split("submitted ", 1)[1].split()[0]
    status = cli(stack, "status", new_id, cwd=tmp_path, timeout=60)
    assert status.returncode == 0
    assert original in " ".join(status.stdout.split())
    merged = cli(stack, "results", new_id, "--merged", cwd=tmp_path, timeout=60)
    assert merged.returncode == 0, merged.stderr
    ids = Counter(json.loads(line)["custom_id"] for line in merged.stdout.splitlines())
    failing = {f"rt{i}" for i in range(0, LINES, FAIL_EVERY)}
    assert ids == Counter({f"rt{i}" for i in range(LINES)} - failing)
    refused = cli(stack, "retry", "batch_" + "0" * 32, cwd=tmp_path, timeout=60)
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "404" in refused.stderr


def test_dashboard_retry_button(
    stack: Stack,
    openai_batch: dict[str, Any],
    browser_context: Any,  # noqa: F811
) -> None:
    batch_id = openai_batch["id"]
    page = browser_context().new_page()
    page.goto(f"{stack.web_url}/#batch={batch_id}")
    expect(page.locator("#detail-id")).to_have_text(batch_id)
    button = page.locator("#batch-retry")
    expect(button).to_be_visible()
    button.click()
    expect(page.locator("#submit-message")).to_contain_text(f"retry of {batch_id}")
    expect(page.locator("#detail-id")).not_to_have_text(batch_id)
    new_id = page.locator("#detail-id").inner_text()
    expect(page.locator("#detail-chain")).to_contain_text(f"retry of {batch_id}")
    assert batches.get(stack, new_id)["retry_of"] == batch_id
    batches.wait_terminal(stack, new_id)
    # A completed batch without failures has nothing to retry: no button.
    done = batches.submit(stack, items=batches.chat_items(2, "rt-ok"))["id"]
    batches.wait_terminal(stack, done)
    page = browser_context().new_page()
    page.goto(f"{stack.web_url}/#batch={done}")
    expect(page.locator("#detail-id")).to_have_text(done)
    expect(page.locator("#detail-status")).to_contain_text("completed")
    expect(page.locator("#batch-retry")).to_be_hidden()
