"""Batches and single requests end to end, against the real servers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time

import pytest
from temporalio.client import Client

from harness import batches
from harness.stack import Stack

pytestmark = pytest.mark.integration


def upload(stack: Stack, key: str, payload: bytes) -> None:
    stack.s3().put_object("llm-batch", key, io.BytesIO(payload), len(payload))


def test_batch_runs_valid_lines_and_reports_invalid_ones_by_line(stack: Stack) -> None:
    items = [
        {"custom_id": "chat", "messages": [{"role": "user", "content": "hi"}]},
        {"custom_id": "text", "prompt": "Once upon a time"},
        {
            "custom_id": "full",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3},
        },
        {"custom_id": "chat", "prompt": "duplicate id"},
        "not an object",
        {"messages": [{"role": "user", "content": "no id"}]},
        {"custom_id": "badurl", "url": "/v1/images", "body": {"prompt": "x"}},
        {"custom_id": "badbody", "url": "/v1/completions", "body": ["x"]},
    ]
    batch = batches.submit(stack, items=items, defaults={"max_tokens": 5, "temperature": 0})
    assert batch["status"] == "validating"
    assert set(batch["workers"]) == {"worker-cpu", "worker-gpu"}
    done = batches.wait_terminal(stack, batch["id"], timeout=120)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 8, "completed": 3, "failed": 5}

    output = batches.results(stack, batch["id"])
    batches.assert_exactly_once(output, {"chat", "text", "full"})
    by_id = {line["custom_id"]: line for line in output}
    assert by_id["chat"]["response"]["status_code"] == 200
    assert by_id["chat"]["response"]["body"]["usage"]["completion_tokens"] == 5  # defaults
    assert by_id["full"]["response"]["body"]["usage"]["completion_tokens"] == 3  # line wins
    assert by_id["text"]["response"]["body"]["object"] == "text_completion"
    assert all(line["error"] is None and line["id"] for line in output)

    problems = {
        line["line"]: line["error"]["message"] for line in batches.errors(stack, batch["id"])
    }
    assert problems == {
        4: "line 4: duplicate custom_id 'chat' (first used on line 1)",
        5: "line 5: expected a JSON object, got str",
        6: "line 6: missing 'custom_id'",
        7: "line 7: unknown url '/v1/images'; expected one of "
        "/v1/chat/completions, /v1/completions, /v1/embeddings",
        8: "line 8: 'body' must be an object, got list",
    }


def test_input_key_streams_an_uploaded_jsonl_with_bad_json_and_huge_lines(stack: Stack) -> None:
    key = f"uploads/input-{os.getpid()}.jsonl"
    lines = [
        json.dumps({"custom_id": f"u{i}", "prompt": "abc", "max_tokens": 2}) for i in range(30)
    ]
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps({"custom_id": "huge", "prompt": "x" * 1_100_000}))
    lines.insert(12, "")
    upload(stack, key, ("\n".join(lines) + "\n").encode())

    batch = batches.submit(stack, input_key=key, endpoint="/v1/completions", shard_size=7)
    done = batches.wait_terminal(stack, batch["id"], timeout=120)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 32, "completed": 30, "failed": 2}
    batches.assert_exactly_once(batches.results(stack, batch["id"]), {f"u{i}" for i in range(30)})
    errors = batches.errors(stack, batch["id"])
    assert [e["line"] for e in errors] == [6, 10]
    assert errors[0]["error"]["message"].startswith("line 6: not valid JSON")
    assert "the limit is 1000000" in errors[1]["error"]["message"]


def test_missing_input_key_is_a_request_error(stack: Stack) -> None:
    response = stack.http.post("/batch", json={"input_key": "uploads/nothing-here.jsonl"})
    assert response.status_code == 400
    assert "does not exist" in response.json()["error"]["message"]


def test_batch_without_a_valid_line_fails_clearly(stack: Stack) -> None:
    batch = batches.submit(stack, items=[{"custom_id": "x"}, "y"])
    done = batches.wait_terminal(stack, batch["id"], timeout=60)
    assert done["status"] == "failed"
    assert done["errors"]["message"] == (
        "no valid request line in 2 line(s); first problem: "
        "line 1: line needs 'body', 'messages', 'prompt' or 'input'"
    )
    assert len(batches.errors(stack, batch["id"])) == 2


def test_llama_errors_fail_that_line_without_endless_retries(stack: Stack) -> None:
    """A prompt longer than a slot's context is the request's fault: an error line, at once."""
    long_prompt = "hello world " * 600  # > 512 tokens a slot in the test stack
    items = [
        {"custom_id": "ok", "prompt": "short", "max_tokens": 2},
        {"custom_id": "too-long", "prompt": long_prompt, "max_tokens": 2},
    ]
    started = time.monotonic()
    batch = batches.submit(stack, items=items)
    done = batches.wait_terminal(stack, batch["id"], timeout=60)
    assert time.monotonic() - started < 60
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    [error] = batches.errors(stack, batch["id"])
    assert error["custom_id"] == "too-long"
    assert error["response"]["status_code"] == 400
    assert error["error"]["line"] == 2
    assert "context" in error["error"]["message"]


def test_json_schema_response_format_passes_through(stack: Stack) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
    }
    items = [
        {
            "custom_id": f"j{i}",
            "messages": [{"role": "user", "content": "yes or no?"}],
            "max_tokens": 32,
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
        }
        for i in range(3)
    ]
    batch = batches.submit(stack, items=items)
    assert batches.wait_terminal(stack, batch["id"], timeout=60)["status"] == "completed"
    for line in batches.results(stack, batch["id"]):
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert json.loads(content)["answer"] in ("yes", "no")


def test_embeddings_lines_run_against_the_embeddings_endpoint(stack: Stack) -> None:
    batch = batches.submit(stack, items=[{"custom_id": "e1", "input": "hello"}])
    assert batches.wait_terminal(stack, batch["id"], timeout=60)["status"] == "completed"
    [line] = batches.results(stack, batch["id"])
    assert len(line["response"]["body"]["data"][0]["embedding"]) == 64


def test_results_are_partial_while_running_and_batches_are_listed(stack: Stack) -> None:
    items = batches.chat_items(600, prefix="p", max_tokens=16)
    batch = batches.submit(stack, items=items, shard_size=50)
    running = batches.wait_until(
        stack, batch["id"], lambda b: b["request_counts"]["completed"] >= 50, timeout=120
    )
    partial = stack.http.get(f"/batch/{batch['id']}/results")
    lines = [json.loads(x) for x in partial.text.splitlines()]
    if running["status"] == "in_progress" and partial.headers["X-Batch-Status"] == "in_progress":
        assert partial.headers["X-Partial"] == "true"
        assert 0 < len(lines) < 600
    ids = [line["custom_id"] for line in lines]
    assert len(ids) == len(set(ids))
    listed = stack.http.get("/batches", params={"limit": 50}).json()["data"]
    assert batch["id"] in [b["id"] for b in listed]
    done = batches.wait_terminal(stack, batch["id"])
    assert done["request_counts"] == {"total": 600, "completed": 600, "failed": 0}
    batches.assert_exactly_once(batches.results(stack, batch["id"]), {f"p{i}" for i in range(600)})


def test_process_answers_synchronously_or_with_an_id_to_poll(stack: Stack) -> None:
    response = stack.http.post(
        "/process", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed"
    assert body["output"]["response"]["body"]["usage"]["completion_tokens"] == 4

    slow = stack.http.post(
        "/process",
        json={"custom_id": "later", "prompt": "hello", "max_tokens": 64, "timeout_s": 0.001},
    )
    assert slow.status_code == 202
    process_id = slow.json()["id"]
    deadline = time.monotonic() + 60
    while (polled := stack.http.get(f"/process/{process_id}")).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert polled.status_code == 200
    assert polled.json()["output"]["custom_id"] == "later"


def test_process_requests_run_on_the_gpu_workers_urgent_queue(stack: Stack) -> None:
    """Shards never go to that queue, so a GPU worker full of shards still takes them."""
    response = stack.http.post("/process", json={"prompt": "hi", "max_tokens": 2, "timeout_s": 60})
    assert response.status_code == 200, response.text

    async def queues() -> tuple[str, list[str], int]:
        client = await Client.connect(stack.env["TEMPORAL_ADDRESS"])
        history = await client.get_workflow_handle(response.json()["id"]).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        activities = [
            event.activity_task_scheduled_event_attributes.task_queue.name
            for event in history.events
            if event.HasField("activity_task_scheduled_event_attributes")
        ]
        local_activities = sum(
            1
            for event in history.events
            if event.HasField("marker_recorded_event_attributes")
            and event.marker_recorded_event_attributes.marker_name == "core_local_activity"
        )
        return started.task_queue.name, activities, local_activities

    workflow_queue, activity_queues, local_activities = asyncio.run(queues())
    # The workflow runs there, and its request as a local activity (one task hand-over).
    assert workflow_queue == f"{stack.env['GPU_TASK_QUEUE']}-urgent"
    assert activity_queues == []
    assert local_activities == 1


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        ("get", "/batch/batch_doesnotexist", {}, 404, "no batch with id"),
        ("get", "/process/proc_doesnotexist", {}, 404, "no request with id"),
        ("post", "/batch/batch_doesnotexist/cancel", {}, 404, "no batch with id"),
        (
            "post",
            "/batch",
            {"content": b"{oops", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ("post", "/batch", {"json": {"items": [], "input_key": "x"}}, 400, "exactly one of"),
        ("post", "/batch", {"json": {"items": ["x"], "endpoint": "/v1/nope"}}, 400, "endpoint"),
        ("post", "/process", {"json": {"custom_id": "x"}}, 400, "needs 'body'"),
        (
            "post",
            "/batch",
            {"content": b"x" * 3_000_000, "headers": {"content-type": "application/json"}},
            413,
            "MAX_REQUEST_BYTES",
        ),
    ],
)
def test_request_errors_have_the_error_shape_and_the_right_status(
    stack: Stack, method: str, path: str, kwargs: dict, status: int, fragment: str
) -> None:
    response = getattr(stack.http, method)(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert fragment in error["message"]
    assert isinstance(error["type"], str)
