"""Nasty input, S3 and Temporal away at submit, retried submits, a missing output file:
what a user sees through the real stack."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid

import pytest
from minio.error import S3Error

from harness import batches
from harness.stack import Stack

pytestmark = pytest.mark.integration

BUCKET = "llm-batch"


def good(custom_id: str) -> bytes:
    line = {"custom_id": custom_id, "prompt": "Once upon", "max_tokens": 4}
    return json.dumps(line).encode()


# (line, reason the error line gives); every other line is good.
NASTY = [
    (b'{"custom_id": "\\ud800", "prompt": "x"}', "lone surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, "nests deeper than"),
    (b'{"custom_id": "big", "prompt": ' + b"7" * 5000 + b"}", "4300 digits"),
    (b'{"custom_id": "utf8", "prompt": "\xc3\x28"}', "not valid UTF-8"),
    (b'{"custom_id": "nul\x00", "prompt": "x"}', "not valid JSON"),
    (b"\x00\x00\x00\x00", "not valid JSON"),
    (b'{"custom_id": "nan", "prompt": NaN}', "NaN is not a JSON number"),
    (b'{"custom_id": "deep-body", "prompt": ' + b"[" * 300 + b"]" * 300 + b"}", "deeper"),
]


def test_every_nasty_line_is_an_error_line_and_the_rest_completes(stack: Stack) -> None:
    lines: list[bytes] = []
    expected_errors: dict[int, str] = {}
    good_ids: set[str] = set()
    for index, (nasty, reason) in enumerate(NASTY):
        lines.append(good(f"ok-{index}"))
        good_ids.add(f"ok-{index}")
        lines.append(nasty)
        expected_errors[len(lines)] = reason
    payload = b"\n".join(lines) + b"\n"
    key = f"uploads/nasty-{uuid.uuid4().hex}.jsonl"
    stack.s3().put_object(BUCKET, key, io.BytesIO(payload), len(payload))

    batch = batches.submit(stack, input_key=key, endpoint="/v1/completions", shard_size=3)
    done = batches.wait_terminal(stack, batch["id"], timeout=180)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {
        "total": len(lines),
        "completed": len(good_ids),
        "failed": len(NASTY),
    }
    batches.assert_exactly_once(batches.results(stack, batch["id"]), good_ids)
    errors = {line["line"]: line for line in batches.errors(stack, batch["id"])}
    assert set(errors) == set(expected_errors)
    for line_no, reason in expected_errors.items():
        message = errors[line_no]["error"]["message"]
        assert message.startswith(f"line {line_no}: ") and reason in message, message


def test_inline_items_with_a_lone_surrogate_custom_id_are_error_lines(stack: Stack) -> None:
    body = {
        "items": [
            {"custom_id": "\ud800", "prompt": "x"},
            {"custom_id": "fine", "prompt": "x", "max_tokens": 2},
            {"custom_id": "body-surrogate", "prompt": "\udc00"},
        ],
        "endpoint": "/v1/completions",
    }
    # ensure_ascii (the default) writes the surrogates as \\u escapes, as a client would.
    response = stack.http.post(
        "/batch", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text
    done = batches.wait_terminal(stack, response.json()["id"], timeout=120)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    errors = sorted(batches.errors(stack, done["id"]), key=lambda line: line["line"])
    assert [line["line"] for line in errors] == [1, 3]
    assert all("lone surrogate" in line["error"]["message"] for line in errors)


def test_a_retried_submit_with_the_same_idempotency_key_gets_the_same_batch(
    stack: Stack,
) -> None:
    key = {"Idempotency-Key": f"client-retry-{uuid.uuid4()}"}
    tag = uuid.uuid4().hex
    body = {"items": batches.chat_items(3, prefix="idem", max_tokens=2), "metadata": {"t": tag}}
    first = stack.http.post("/batch", json=body, headers=key)
    again = stack.http.post("/batch", json=body, headers=key)
    assert first.status_code == again.status_code == 202, again.text
    assert first.json()["id"] == again.json()["id"]
    done = batches.wait_terminal(stack, first.json()["id"], timeout=120)
    late = stack.http.post("/batch", json=body, headers=key)  # after it finished
    assert late.json()["id"] == done["id"] and late.json()["status"] == "completed"
    # The key with another body is a 422 naming it; nothing new starts.
    changed = stack.http.post("/batch", json={**body, "metadata": {"t": "other"}}, headers=key)
    assert changed.status_code == 422, changed.text
    assert key["Idempotency-Key"] in changed.json()["error"]["message"]
    # The listing finds it by status and metadata, and only it.
    listed = stack.http.get("/batches", params={"status": "completed", "metadata[t]": tag})
    assert [b["id"] for b in listed.json()["data"]] == [done["id"]], listed.text
    assert listed.json()["has_more"] is False
    other = stack.http.post("/batch", json=body, headers={"Idempotency-Key": "another"})
    assert other.json()["id"] != done["id"]

    process_key = {"Idempotency-Key": f"process-{uuid.uuid4()}"}
    request = {"prompt": "Once", "max_tokens": 2, "timeout_s": 60}
    one = stack.http.post("/process", json=request, headers=process_key)
    two = stack.http.post("/process", json=request, headers=process_key)
    assert one.status_code == two.status_code == 200, two.text
    assert one.json()["id"] == two.json()["id"]
    assert one.json()["output"] == two.json()["output"]


def test_results_come_from_the_shards_when_the_output_file_is_missing(stack: Stack) -> None:
    items = batches.chat_items(6, prefix="merge", max_tokens=2)
    batch = batches.submit(stack, items=items, shard_size=2)
    done = batches.wait_terminal(stack, batch["id"], timeout=120)
    assert done["status"] == "completed"
    stack.s3().remove_object(BUCKET, done["output_key"])  # as if the merge never wrote it
    response = stack.http.get(f"/batch/{done['id']}/results")
    assert response.status_code == 200
    assert response.headers["X-Partial"] == "true"
    lines = [json.loads(line) for line in response.text.splitlines()]
    batches.assert_exactly_once(lines, {f"merge{i}" for i in range(6)})


def test_s3_down_at_submit_is_a_quick_503_and_temporal_down_leaves_no_input(
    stack: Stack,
) -> None:
    body = {"items": batches.chat_items(2, prefix="down", max_tokens=2)}
    assert "minio: stopped" in stack.supervisorctl("stop", "minio")
    try:
        started = time.monotonic()
        response = stack.http.post("/batch", json=body)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert "S3" in response.json()["error"]["message"]
        print(f"503 with S3 down after {elapsed:.1f}s")
    finally:
        assert "minio: started" in stack.supervisorctl("start", "minio")
        stack.wait_healthy(120)

    def staged_inputs() -> set[str]:
        objects = stack.s3().list_objects(BUCKET, prefix="batches/", recursive=True)
        return {o.object_name for o in objects if o.object_name.endswith("/input.jsonl")}

    before = staged_inputs()
    idempotency = f"temporal-down-{uuid.uuid4()}"
    assert "temporal: stopped" in stack.supervisorctl("stop", "temporal")
    try:
        response = stack.http.post("/batch", json=body)
        assert response.status_code == 503, response.text
        response = stack.http.post("/batch", json=body, headers={"Idempotency-Key": idempotency})
        assert response.status_code == 503, response.text
    finally:
        assert "temporal: started" in stack.supervisorctl("start", "temporal")
        stack.wait_healthy(120)
    assert staged_inputs() == before, "an input staged for a batch that never started"
    batch_id = "batch_" + hashlib.sha256(idempotency.encode()).hexdigest()[:32]
    with pytest.raises(S3Error):
        stack.s3().stat_object(BUCKET, f"batches/{batch_id}/input.jsonl")
    # And the retry, now that Temporal is back, gets its batch.
    retried = stack.http.post("/batch", json=body, headers={"Idempotency-Key": idempotency})
    assert retried.status_code == 202 and retried.json()["id"] == batch_id
    assert batches.wait_terminal(stack, batch_id, timeout=120)["status"] == "completed"
