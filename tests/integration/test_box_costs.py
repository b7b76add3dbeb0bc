"""A batch across two boxes rented at different prices pays each box's GPU time at that box's
own price: two GPU boxes (the stack's and a second one, each with its BOX_PRICE_PER_HOUR)
against one Temporal, S3 and queues, the real workers and llama-servers.

`GET /batch/{id}` shows each box's share (`box_costs`) and a cost that is their sum, and a
`max_cost_usd` stops the batch by that sum, where one price for all the GPU time would not
have stopped it yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import batches
from harness.fleet import Box
from harness.stack import Stack, start_stack
from tests.integration.test_operator import cli

pytestmark = pytest.mark.integration

# Prices far above real ones so that seconds of the tiny model cost whole dollars.
PRICE_A = 360.0  # USD per hour: 0.1 $/s
PRICE_B = 3600.0  # 1 $/s: ten times box-a's
SHARD = 50


@pytest.fixture(scope="module")
def priced_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Box]]:
    base = Path(tmp_path_factory.mktemp("box-costs"))
    stack = start_stack(
        base,
        BOX_NAME="box-a",
        BOX_PRICE_PER_HOUR=str(PRICE_A),
        LLAMA_PARALLEL="4",
        LLAMA_CTX_PER_SLOT="512",
        BATCH_WINDOW="1",
        WORKER_IDLE_EXIT_SECONDS="120",
    )
    box_b = Box(stack, "box-b", 4, base, BOX_PRICE_PER_HOUR=str(PRICE_B))
    try:
        box_b.start()
        yield stack, box_b
    finally:
        box_b.stop()
        stack.stop()


def live_boxes(stack: Stack) -> set[str]:
    response = stack.http.get("/queues")
    assert response.status_code == 200, response.text
    return {box["box"] for box in response.json()["boxes"] if box["live"]}


def both_boxes_live(stack: Stack) -> None:
    """box-a's on-demand worker awake (a tiny batch wakes it) and both boxes reporting."""
    deadline = time.monotonic() + 90
    while live_boxes(stack) != {"box-a", "box-b"}:
        if "box-a" not in live_boxes(stack):
            tiny = batches.submit(stack, items=batches.chat_items(2, prefix="wake"), shard_size=1)
            batches.wait_terminal(stack, tiny["id"], timeout=120)
        assert time.monotonic() < deadline, f"live boxes: {live_boxes(stack)}"
        time.sleep(0.5)


def billed(box: dict[str, Any], elapsed: float) -> float:
    """A box's cost as documented: its price times its GPU time capped at the batch's."""
    return float(box["price_per_hour"]) * min(float(box["gpu_seconds"]), elapsed) / 3600


def test_cost_is_each_box_time_at_its_own_price(
    priced_fleet: tuple[Stack, Box], tmp_path: Path
) -> None:
    stack, _ = priced_fleet
    both_boxes_live(stack)
    items = batches.chat_items(1_000, prefix="c", max_tokens=8)
    batch = batches.submit(stack, items=items, shard_size=SHARD)
    done = batches.wait_terminal(stack, batch["id"], timeout=600)
    assert done["status"] == "completed", done
    batches.assert_exactly_once(
        batches.results(stack, batch["id"]), {i["custom_id"] for i in items}
    )

    costs = done["box_costs"]
    assert set(costs) == {"box-a", "box-b"} == set(done["boxes"])
    assert costs["box-a"]["price_per_hour"] == PRICE_A
    assert costs["box-b"]["price_per_hour"] == PRICE_B
    elapsed = done["elapsed_seconds"]
    for box in costs.values():
        assert box["gpu_seconds"] > 0
        assert box["cost_usd"] == pytest.approx(billed(box, elapsed), abs=1e-5)
    assert sum(box["gpu_seconds"] for box in costs.values()) == pytest.approx(
        done["gpu_seconds"], abs=0.01
    )
    assert done["cost_usd"] == pytest.approx(sum(b["cost_usd"] for b in costs.values()), abs=1e-5)
    # Not one price for all: box-a's price alone would have made it much cheaper.
    assert done["cost_usd"] > PRICE_A * min(done["gpu_seconds"], 2 * elapsed) / 3600 * 1.5

    # The CLI's status table shows each box's share.
    shown = cli(stack, "status", batch["id"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    for name, box in costs.items():
        assert f"{name} {box['gpu_seconds']:.1f}s GPU at ${box['price_per_hour']:g}/h" in text


def test_budget_stops_the_batch_by_the_sum_over_boxes(priced_fleet: tuple[Stack, Box]) -> None:
    stack, _ = priced_fleet
    both_boxes_live(stack)
    budget = 15.0  # dollars: about 14 s of both boxes, well before the batch is done
    items = batches.chat_items(5_000, prefix="b", max_tokens=8)
    batch = batches.submit(stack, items=items, shard_size=SHARD, max_cost_usd=budget)
    assert batch["gpu_price_per_hour"] == PRICE_A  # the API box's price: the fallback
    done = batches.wait_terminal(stack, batch["id"], timeout=600)
    assert done["status"] == "cancelled" and done["end_reason"] == "budget", done
    assert done["errors"]["message"].startswith("budget reached")
    counts = done["request_counts"]
    assert 0 < counts["completed"] < len(items)
    # Every request is in the output or the error file, once.
    lines = batches.results(stack, batch["id"]) + batches.errors(stack, batch["id"])
    batches.assert_exactly_once(lines, {i["custom_id"] for i in items})

    costs = done["box_costs"]
    assert {name: box["price_per_hour"] for name, box in costs.items()} == {
        "box-a": PRICE_A,
        "box-b": PRICE_B,
    }
    cost = done["cost_usd"]
    assert cost == pytest.approx(sum(b["cost_usd"] for b in costs.values()), abs=1e-5)
    # It stopped once the sum (plus one more shard at the average so far) passed the budget;
    # the shards cut off by the stop are not counted, so the sum is near the budget.
    assert budget * 0.5 < cost < budget * 1.6
    # box-a's price for all the GPU time (the single-price rule) was still well inside it.
    single = PRICE_A * min(done["gpu_seconds"], 2 * done["elapsed_seconds"]) / 3600
    assert single < budget * 0.5
