"""Crashes only delay a batch: every custom_id comes back exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest
from temporalio.client import Client

from harness import batches
from harness.stack import Stack

pytestmark = pytest.mark.integration

ITEMS = 1200
SHARD = 100


def start_batch(stack: Stack, prefix: str, count: int = ITEMS, max_tokens: int = 16) -> dict:
    items = batches.chat_items(count, prefix=prefix, max_tokens=max_tokens)
    batch = batches.submit(stack, items=items, shard_size=SHARD)
    batches.wait_until(
        stack,
        batch["id"],
        lambda b: b["status"] == "in_progress" and b["request_counts"]["completed"] >= SHARD,
        timeout=120,
    )
    return batch


def assert_complete(stack: Stack, batch_id: str, prefix: str) -> None:
    done = batches.wait_terminal(stack, batch_id, timeout=300)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    batches.assert_exactly_once(
        batches.results(stack, batch_id), {f"{prefix}{i}" for i in range(ITEMS)}
    )
    assert batches.errors(stack, batch_id) == []


@pytest.mark.parametrize("program", ["worker-gpu", "worker-cpu"])
def test_sigkill_of_a_worker_mid_batch_loses_nothing(stack: Stack, program: str) -> None:
    prefix = program[-3]  # "g" or "c": each run has its own custom_ids
    batch = start_batch(stack, prefix)
    pid = stack.program_pid(program)
    assert pid > 0
    os.kill(pid, signal.SIGKILL)
    assert_complete(stack, batch["id"], prefix)


def test_llama_server_restart_mid_batch_loses_nothing(stack: Stack) -> None:
    batch = start_batch(stack, "l")
    assert "llama: stopped" in stack.supervisorctl("restart", "llama")
    assert_complete(stack, batch["id"], "l")
    stack.wait_healthy(60)


def handed_over(stack: Stack, batch_id: str) -> list[str]:
    """Why the batch's pending shards last failed, for those given back because their box's
    llama-server was gone."""

    async def pending() -> list[str]:
        client = await Client.connect(stack.env["TEMPORAL_ADDRESS"])
        description = await client.get_workflow_handle(batch_id).describe()
        return [
            activity.last_failure.message
            for activity in description.raw_description.pending_activities
            if activity.last_failure.application_failure_info.type == "LlamaDown"
        ]

    return asyncio.run(pending())


def test_llama_server_down_past_the_hand_over_time_loses_nothing(stack: Stack) -> None:
    """One box, its llama-server down longer than LLAMA_DOWN_HANDOVER_SECONDS: the shards are
    given back with what they answered, wait in the queue while no box takes them (the idle
    GPU worker may exit meanwhile; the API starts it again for the backlog), and run when
    llama-server is back (supervisord restarts it): nothing lost, nothing failed."""
    batch = start_batch(stack, "h")
    stopped = time.monotonic()  # llama-server stops answering during supervisorctl's stop
    assert "llama: stopped" in stack.supervisorctl("stop", "llama")
    try:
        deadline = stopped + 180
        while not (causes := handed_over(stack, batch["id"])):
            assert time.monotonic() < deadline, stack.logs_tail()
            time.sleep(0.5)
        noticed = time.monotonic() - stopped
        time.sleep(10)  # down well past the hand-over: the shards wait, none fails for good
        assert batches.get(stack, batch["id"])["status"] == "in_progress"
    finally:
        assert "llama: started" in stack.supervisorctl("start", "llama")
    assert_complete(stack, batch["id"], "h")
    print(f"\nllama-server down: shards handed over after {noticed:.1f}s: {causes[0]}")
    stack.wait_healthy(60)


def test_api_restart_mid_batch_keeps_status_right(stack: Stack) -> None:
    batch = start_batch(stack, "a")
    before = batches.get(stack, batch["id"])
    assert "fastapi: started" in stack.supervisorctl("restart", "fastapi")
    stack.wait_healthy(60)
    after = batches.get(stack, batch["id"])
    assert after["status"] in ("in_progress", "finalizing", "completed")
    assert after["request_counts"]["completed"] >= before["request_counts"]["completed"]
    assert after["created_at"] == before["created_at"]
    assert_complete(stack, batch["id"], "a")


def test_cancel_shows_at_once_stops_the_shards_and_keeps_every_answer(stack: Stack) -> None:
    # Large enough that the batch cannot finish while the cancellation reaches the shards,
    # shards large enough that the running ones have answered some of their lines by then.
    total, shard = 4000, 200
    items = batches.chat_items(total, prefix="x", max_tokens=32)
    batch = batches.submit(stack, items=items, shard_size=shard)
    batches.wait_until(
        stack,
        batch["id"],
        lambda b: b["status"] == "in_progress" and b["request_counts"]["completed"] >= shard,
        timeout=120,
    )
    answered_before = {line["custom_id"] for line in batches.results(stack, batch["id"])}

    response = stack.http.post(f"/batch/{batch['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelling"
    assert response.json()["cancelling_at"] is not None
    seen = batches.get(stack, batch["id"])
    assert seen["status"] == "cancelling", seen
    assert seen["cancelling_at"] is not None

    done = batches.wait_terminal(stack, batch["id"], timeout=120)
    assert done["status"] == "cancelled", done
    assert done["cancelling_at"] is not None and done["cancelled_at"] is not None
    counts = done["request_counts"]
    assert shard <= counts["completed"] < total // 2  # the running shards stopped
    output = batches.results(stack, batch["id"])
    assert len(output) == counts["completed"]
    ids = [line["custom_id"] for line in output]
    assert len(ids) == len(set(ids))
    assert answered_before <= set(ids)
    assert all(line["error"] is None for line in output)
    # The shards running at the cancel kept what they had answered: some shard is there in
    # part, and more lines are kept than the finished shards hold.
    per_shard = Counter(int(custom_id[1:]) // shard for custom_id in ids)
    assert any(0 < count < shard for count in per_shard.values()), per_shard
    finished = sum(1 for count in per_shard.values() if count == shard)
    assert len(output) > finished * shard
    # Every request that never ran is in the error file, once, as OpenAI writes it.
    errors = batches.errors(stack, batch["id"])
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert sorted(ids + [line["custom_id"] for line in errors]) == sorted(
        i["custom_id"] for i in items
    )
    assert counts["completed"] + counts["failed"] == counts["total"] == total

    again = stack.http.post(f"/batch/{batch['id']}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["error"]["message"]


def test_cancel_shows_even_before_the_workflow_has_seen_it(stack: Stack) -> None:
    """With the CPU worker away the workflow cannot publish `cancelling` yet; the API still
    says it, from Temporal's record of the request, and the cancel completes on its return."""
    batch = start_batch(stack, "w")
    assert "worker-cpu: stopped" in stack.supervisorctl("stop", "worker-cpu")
    try:
        response = stack.http.post(f"/batch/{batch['id']}/cancel")
        assert response.status_code == 200, response.text
        seen = batches.get(stack, batch["id"])
        assert seen["status"] == "cancelling", seen
        assert seen["cancelling_at"] is not None
    finally:
        stack.supervisorctl("start", "worker-cpu")
    done = batches.wait_terminal(stack, batch["id"], timeout=180)
    assert done["status"] == "cancelled", done
    output = batches.results(stack, batch["id"])
    assert len(output) == done["request_counts"]["completed"] >= SHARD
    ids = [line["custom_id"] for line in output]
    assert len(ids) == len(set(ids))


def test_sigkill_of_the_gpu_worker_mid_request_still_answers(stack: Stack) -> None:
    """The single-request workflow runs its request as a local activity on the GPU worker:
    a worker killed while the request is in flight must not lose it."""
    stack.http.post("/process", json={"prompt": "warm", "max_tokens": 2}).raise_for_status()
    # With llama-server stopped the request keeps retrying inside the GPU worker.
    assert "llama: stopped" in stack.supervisorctl("stop", "llama")
    try:
        pending = stack.http.post(
            "/process",
            json={"custom_id": "survivor", "prompt": "hello", "max_tokens": 4, "timeout_s": 1},
        )
        assert pending.status_code == 202, pending.text
        pid = stack.program_pid("worker-gpu")
        assert pid > 0
        os.kill(pid, signal.SIGKILL)
    finally:
        assert "llama: started" in stack.supervisorctl("start", "llama")
    stack.wait_healthy(60)
    process_id = pending.json()["id"]
    deadline = time.monotonic() + 120
    while (polled := stack.http.get(f"/process/{process_id}")).status_code == 202:
        assert time.monotonic() < deadline, stack.logs_tail()
        time.sleep(0.25)
    assert polled.status_code == 200, polled.text
    body = polled.json()
    assert body["status"] == "completed", body
    assert body["output"]["custom_id"] == "survivor"
    assert body["output"]["response"]["status_code"] == 200
