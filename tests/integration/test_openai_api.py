"""The official `openai` client, unchanged, against the real stack's `/v1` routes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import Batch

from harness import batches
from harness.stack import Stack

pytestmark = pytest.mark.integration

OVER = {"completed", "failed", "cancelled", "expired"}
MISSING_FILE = "file-" + "0" * 32


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=f"{stack.api_url}/v1",
        api_key=stack.env.get("API_KEY") or "unused",
        max_retries=0,
        timeout=120,
    ) as opened:
        yield opened


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def request_lines(count: int, prefix: str, max_tokens: int = 4) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(count)
    ]


def upload(client: OpenAI, lines: list[dict[str, Any]], name: str = "input.jsonl") -> str:
    created = client.files.create(file=(name, jsonl(lines)), purpose="batch")
    assert created.purpose == "batch" and created.filename == name
    return created.id


def wait(client: OpenAI, batch_id: str, done: Any, stack: Stack, timeout: float = 300) -> Batch:
    deadline = time.monotonic() + timeout
    batch = client.batches.retrieve(batch_id)
    while not done(batch):
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} stuck: {batch}\n{stack.logs_tail(15)}")
        time.sleep(0.2)
        batch = client.batches.retrieve(batch_id)
    return batch


def read(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_upload_create_poll_and_download(client: OpenAI, stack: Stack) -> None:
    lines = request_lines(12, "ok")
    lines.insert(3, {"custom_id": "nomsg", "url": "/v1/chat/completions", "body": {"x": 1}})
    lines.append({"custom_id": "badurl", "url": "/v1/images", "body": {"prompt": "x"}})
    file_id = upload(client, lines)
    stored = client.files.retrieve(file_id)
    assert (stored.filename, stored.purpose) == ("input.jsonl", "batch")
    assert stored.bytes == len(jsonl(lines))
    assert client.files.content(file_id).content == jsonl(lines)

    created = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "sdk"},
    )
    assert created.status == "validating"
    assert created.input_file_id == file_id
    assert created.expires_at == created.created_at + 86_400
    assert created.metadata == {"project": "sdk"}

    done = wait(client, created.id, lambda b: b.status in OVER, stack)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 14, "completed": 12, "failed": 2}
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    assert done.usage is not None
    assert done.usage.output_tokens == 12 * 4
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens > 48

    output = read(client, done.output_file_id)
    batches.assert_exactly_once(output, {f"ok{i}" for i in range(12)})
    assert all(line["response"]["status_code"] == 200 for line in output)
    errors = read(client, done.error_file_id)
    batches.assert_exactly_once(errors, {"nomsg", "badurl"})

    assert done.output_file_id is not None and done.error_file_id is not None
    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    listed = {f.id: f.purpose for f in client.files.list()}
    assert listed[file_id] == "batch"
    assert listed[done.output_file_id] == listed[done.error_file_id] == "batch_output"
    outputs_only = {f.purpose for f in client.files.list(purpose="batch_output")}
    assert outputs_only == {"batch_output"}

    # The same batch through the native routes.
    native = batches.get(stack, created.id)
    assert native["status"] == "completed" and native["metadata"] == {"project": "sdk"}

    assert client.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_cancel_keeps_what_finished(client: OpenAI, stack: Stack) -> None:
    file_id = upload(client, request_lines(4000, "c", max_tokens=16))
    created = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait(client, created.id, lambda b: b.status == "in_progress", stack)
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling"
    done = wait(client, created.id, lambda b: b.status in OVER, stack)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    assert done.request_counts is not None
    output = read(client, done.output_file_id)
    assert len(output) == done.request_counts.completed < 4000
    batches.assert_exactly_once(output, {line["custom_id"] for line in output})
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(created.id)


def test_expired_batch_keeps_what_finished(client: OpenAI, stack: Stack) -> None:
    file_id = upload(client, request_lines(6000, "e", max_tokens=16))
    created = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="8s",  # type: ignore[arg-type]  # the client types only "24h"
    )
    assert created.completion_window == "8s"
    assert created.expires_at == created.created_at + 8
    done = wait(client, created.id, lambda b: b.status in OVER, stack)
    assert done.status == "expired", done
    assert done.expired_at is not None and done.expired_at >= created.created_at + 8
    assert done.request_counts is not None and done.request_counts.completed < 6000
    output = read(client, done.output_file_id)
    assert len(output) == done.request_counts.completed
    expected = {f"e{i}" for i in range(6000)}
    ids = [line["custom_id"] for line in output]
    assert len(ids) == len(set(ids)) and set(ids) <= expected
    assert batches.get(stack, created.id)["status"] == "expired"


def test_list_batches_with_pagination(client: OpenAI, stack: Stack) -> None:
    file_id = upload(client, request_lines(1, "p"))
    made = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    assert [b.id for b in first.data] == made[::-1][:2]  # newest first
    second = first.get_next_page()
    assert second.data[0].id == made[0]
    everything = [b.id for b in client.batches.list(limit=2)]  # auto-pagination
    assert everything[:3] == made[::-1]
    assert len(everything) == len(set(everything))
    for batch_id in made:
        wait(client, batch_id, lambda b: b.status in OVER, stack)


def test_synchronous_chat_completion_and_models(client: OpenAI) -> None:
    models = client.models.list().data
    assert len(models) == 1 and models[0].id == "tiny-llama"  # LLAMA_MODEL_ALIAS
    assert client.models.retrieve(models[0].id).id == models[0].id
    answer = client.chat.completions.create(
        model=models[0].id,
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=5,
        temperature=0,
    )
    assert answer.object == "chat.completion"
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert answer.choices[0].message.role == "assistant"

    text = client.completions.create(model=models[0].id, prompt="Once upon", max_tokens=3)
    assert text.usage is not None and text.usage.completion_tokens == 3

    vectors = client.embeddings.create(model=models[0].id, input=["one", "two"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=models[0].id, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert refused.value.param == "stream"


def test_errors(client: OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve(MISSING_FILE)
    assert missing.value.body == {
        "message": f"No such File object: {MISSING_FILE}",
        "type": "invalid_request_error",
        "param": "file_id",
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id=MISSING_FILE, endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 32)

    # A batch's error file is not an input.
    file_id = upload(client, [{"custom_id": "w", "body": {"no": "messages"}}])
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait(client, batch.id, lambda b: b.status in OVER, stack)
    assert done.status == "failed" and done.errors is not None
    assert done.output_file_id is None and done.error_file_id is not None
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.batches.create(
            input_file_id=done.error_file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    assert wrong_purpose.value.param == "input_file_id"
    assert "purpose 'batch_output'" in wrong_purpose.value.message
    with pytest.raises(openai.BadRequestError) as wrong_upload:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert wrong_upload.value.param == "purpose"

    with pytest.raises(openai.BadRequestError) as endpoint:
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/responses",
            completion_window="24h",
        )
    assert endpoint.value.param == "endpoint"

    with pytest.raises(openai.BadRequestError) as malformed:
        client.files.create(file=("x.jsonl", b'{"custom_id": "a"}\nnot json\n'), purpose="batch")
    assert "file line 2 is not valid JSON" in malformed.value.message
    raw = httpx.post(
        f"{stack.api_url}/v1/files",
        content=b"--x\r\nnot a form",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


def test_deleted_batch_data_is_served_nowhere(client: OpenAI, stack: Stack) -> None:
    """A batch with no failed line lists no error file; deleting its output file stops
    /results; DELETE /batch refuses a running batch and removes every file of a done one."""
    file_id = upload(client, request_lines(6, "del"))
    slow = client.batches.create(
        input_file_id=upload(client, request_lines(400, "slow", max_tokens=32)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    refused = stack.http.delete(f"/batch/{slow.id}")
    assert refused.status_code == 409 and "cancel it first" in refused.text
    client.batches.cancel(slow.id)

    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait(client, batch.id, lambda b: b.status in OVER, stack)
    assert done.status == "completed" and done.error_file_id is None
    assert done.output_file_id is not None and done.model == "tiny-llama"
    listed = {f.id for f in client.files.list()}
    assert done.output_file_id in listed
    assert f"file-{batch.id}-errors" not in listed  # no error file the batch does not name
    assert len(read(client, done.output_file_id)) == 6
    assert all(
        line["response"]["body"]["model"] == "tiny-llama"
        for line in read(client, done.output_file_id)
    )

    assert client.files.delete(done.output_file_id).deleted
    gone = stack.http.get(f"/batch/{batch.id}/results")
    assert gone.status_code == 410 and "deleted" in gone.text

    wait(client, slow.id, lambda b: b.status in OVER, stack)
    deleted = stack.http.delete(f"/batch/{slow.id}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert deleted.json()["input_file_kept"] == slow.input_file_id
    listed = {f.id for f in client.files.list()}
    assert not any(slow.id in name for name in listed)
    assert stack.http.get(f"/batch/{slow.id}/errors").status_code == 410
    assert stack.http.get(f"/batch/{slow.id}").status_code == 200  # Temporal's history stays
