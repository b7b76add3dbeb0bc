"""A sick llama-server: it answers `/health`, but every request fails with a 500 (a driver
fault). Its box is treated like one whose llama-server is gone: after
LLAMA_DOWN_HANDOVER_SECONDS it gives its shards to the other box, and once requests
succeed again it takes work again. One bad prompt on a sound server still fails only its
own line, after its retries, and moves nothing.

box-b's worker reaches its real llama-server through a small proxy that can answer 500
(harness/sick_llama.py); everything else is the real stack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import batches
from harness.fleet import Box
from harness.sick_llama import SickLlamaProxy
from harness.stack import Stack, start_stack
from tests.integration.test_fleet import (
    live_boxes,
    retries,
    strike_while_busy,
    wait_for,
    worker_identity_pid,
)

pytestmark = pytest.mark.integration

SHARD = 25
ITEMS = 300
HANDOVER_SECONDS = 10.0
# box-b's retry budget for one request (LLAMA_REQUEST_TIMEOUT_SECONDS): the poisoned line
# fails after it.
REQUEST_BUDGET_SECONDS = 15


@pytest.fixture(scope="module")
def sick_fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, Box, SickLlamaProxy]]:
    base = Path(tmp_path_factory.mktemp("sick"))
    # Workers started here, not on demand: the poisoned-line test runs with box-b alone.
    stack = start_stack(
        base,
        BOX_NAME="box-a",
        LLAMA_PARALLEL="4",
        LLAMA_CTX_PER_SLOT="512",
        BATCH_WINDOW="1",
        AUTO_START_WORKERS="false",
        WORKER_IDLE_EXIT_SECONDS="600",
    )
    box_b = Box(stack, "box-b", 2, base, LLAMA_REQUEST_TIMEOUT_SECONDS=str(REQUEST_BUDGET_SECONDS))
    proxy = SickLlamaProxy(box_b.port)
    box_b.extra["LLAMA_URL"] = proxy.url
    try:
        proxy.start()
        box_b.start()
        stack.supervisorctl("start", "worker-cpu")
        yield stack, box_b, proxy
    finally:
        box_b.stop()
        proxy.stop()
        stack.stop()


def test_a_sick_llama_server_hands_its_shards_over_and_takes_work_again(
    sick_fleet: tuple[Stack, Box, SickLlamaProxy],
) -> None:
    stack, box_b, proxy = sick_fleet
    proxy.sick = False
    stack.supervisorctl("start", "worker-gpu")
    wait_for(lambda: len(live_boxes(stack)) == 2, 90, "two live boxes")
    assert box_b.worker is not None
    worker_pid = box_b.worker.pid
    batch = batches.submit(
        stack, items=batches.chat_items(ITEMS, prefix="k", max_tokens=16), shard_size=SHARD
    )

    def turn_sick() -> None:
        proxy.sick = True

    def get_well() -> None:
        proxy.sick = False

    sick_at = strike_while_busy(stack, batch["id"], box_b, SHARD, turn_sick, get_well)
    done = batches.wait_terminal(stack, batch["id"], timeout=300)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    batches.assert_exactly_once(
        batches.results(stack, batch["id"]), {f"k{i}" for i in range(ITEMS)}
    )
    assert batches.errors(stack, batch["id"]) == []
    assert proxy.failed > 0, "box-b's requests were failing"
    handed = [r for r in retries(stack, batch["id"]) if r.cause_type == "LlamaFailing"]
    assert handed, "box-b handed its shards over as sick (not by a heartbeat timeout)"
    assert all("box box-b" in r.cause and "answers /health" in r.cause for r in handed), handed
    elsewhere = [
        r for r in handed if r.started > sick_at and worker_identity_pid(r.identity) != worker_pid
    ]
    assert elsewhere, f"box-b's shards ran on box-a: {handed}"
    moved = elsewhere[0].started - sick_at
    print(
        f"\nsick llama-server on box-b (500 to every request): its shards running on box-a "
        f"{moved:.1f}s later, {len(handed)} hand-over(s), per box {done['boxes']}; "
        f"cause: {handed[0].cause}"
    )
    assert moved < HANDOVER_SECONDS + 15, f"handed over {moved:.1f}s after it turned sick"

    # Well again: the same worker takes shards again, once its check request has succeeded.
    since = box_b.worker_log_size()
    proxy.sick = False
    healed = time.monotonic()
    box_b.wait_worker_log("works again: this box takes shards", since, timeout=60)
    again = batches.submit(
        stack, items=batches.chat_items(ITEMS, prefix="m", max_tokens=16), shard_size=SHARD
    )
    finished = batches.wait_terminal(stack, again["id"], timeout=300)
    assert finished["status"] == "completed", finished
    batches.assert_exactly_once(
        batches.results(stack, again["id"]), {f"m{i}" for i in range(ITEMS)}
    )
    assert finished["boxes"].get("box-b", 0) > 0, f"box-b took no shard again: {finished}"
    assert box_b.worker.pid == worker_pid and box_b.worker.poll() is None
    print(f"box-b well again: next batch in {time.monotonic() - healed:.1f}s, {finished['boxes']}")


def test_one_bad_prompt_fails_only_its_line(sick_fleet: tuple[Stack, Box, SickLlamaProxy]) -> None:
    """box-b alone; one prompt answered 500 every time: that line is an error line after
    its retries, every other line is answered, and no shard is handed over."""
    stack, box_b, proxy = sick_fleet
    proxy.sick = False
    stack.supervisorctl("stop", "worker-gpu")
    wait_for(lambda: set(live_boxes(stack)) == {"box-b"}, 90, "box-b alone")
    box_b.ensure_running()
    count = 50
    items = batches.chat_items(count, prefix="b", max_tokens=8)
    items[37]["messages"][0]["content"] = "poisoned prompt"
    proxy.poison = "poisoned prompt"
    failed_before = proxy.failed
    try:
        started = time.monotonic()
        batch = batches.submit(stack, items=items, shard_size=SHARD)
        done = batches.wait_terminal(stack, batch["id"], timeout=300)
    finally:
        proxy.poison = None
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": count, "completed": count - 1, "failed": 1}
    errors = batches.errors(stack, batch["id"])
    assert [line["custom_id"] for line in errors] == ["b37"], errors
    assert errors[0]["error"]["code"] == "llama_http_500", errors
    results = batches.results(stack, batch["id"])
    assert sorted(line["custom_id"] for line in results) == sorted(
        f"b{i}" for i in range(count) if i != 37
    )
    assert not [r for r in retries(stack, batch["id"]) if r.cause_type == "LlamaFailing"]
    elapsed = time.monotonic() - started
    attempts = proxy.failed - failed_before
    print(f"\none bad prompt: its line failed after {attempts} attempts, batch in {elapsed:.1f}s")
    # Backing off from 0.25 s, doubling to 5 s, until less than the next delay is left of
    # the budget: at least five attempts in 15 s (the timing itself is the machine's).
    assert attempts >= 5, "the bad line was retried within its budget"
