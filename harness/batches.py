"""Helpers to drive batches through the real API."""

from __future__ import annotations

import json
import time
from typing import Any

from harness.stack import Stack
from kernel.lifecycle import FINAL_STATES

TERMINAL = FINAL_STATES


def chat_items(count: int, prefix: str = "q", max_tokens: int = 8) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "messages": [{"role": "user", "content": f"question {i}"}],
            "max_tokens": max_tokens,
        }
        for i in range(count)
    ]


def submit(stack: Stack, **body: Any) -> dict[str, Any]:
    response = stack.http.post("/batch", json=body)
    assert response.status_code == 202, response.text
    batch: dict[str, Any] = response.json()
    return batch


def get(stack: Stack, batch_id: str) -> dict[str, Any]:
    response = stack.http.get(f"/batch/{batch_id}")
    assert response.status_code == 200, response.text
    batch: dict[str, Any] = response.json()
    return batch


def wait_until(stack: Stack, batch_id: str, predicate: Any, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    batch: dict[str, Any] = {}
    while time.monotonic() < deadline:
        batch = get(stack, batch_id)
        if predicate(batch):
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} stuck: {batch}\n{stack.logs_tail(15)}")


def wait_terminal(stack: Stack, batch_id: str, timeout: float = 300) -> dict[str, Any]:
    return wait_until(stack, batch_id, lambda b: b["status"] in TERMINAL, timeout)


def jsonl(stack: Stack, path: str) -> list[dict[str, Any]]:
    response = stack.http.get(path)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def results(stack: Stack, batch_id: str) -> list[dict[str, Any]]:
    return jsonl(stack, f"/batch/{batch_id}/results")


def errors(stack: Stack, batch_id: str) -> list[dict[str, Any]]:
    return jsonl(stack, f"/batch/{batch_id}/errors")


def assert_exactly_once(lines: list[dict[str, Any]], expected_ids: set[str]) -> None:
    ids = [line["custom_id"] for line in lines]
    duplicates = {i for i in ids if ids.count(i) > 1} if len(ids) != len(set(ids)) else set()
    assert not duplicates, f"duplicated custom_ids: {sorted(duplicates)[:10]}"
    missing = sorted(expected_ids - set(ids))[:10]
    extra = sorted(set(ids) - expected_ids)[:10]
    assert not missing and not extra, f"missing {missing}, extra {extra}"
