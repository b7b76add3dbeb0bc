"""Per-batch rates, time left and cost (the read view, kernel.view), the box price from
`vastai show instances`, and the dashboard's upload parsing."""

from __future__ import annotations

import pytest

from app.services.pricing import price_from_instances
from app.web.server import batch_body
from kernel.inputs import BatchProgress, ShardResult
from kernel.status import BatchStatus, BoxCost
from kernel.view import BatchView, batch_cost_usd

NOW = 1_100.0


def running(**changes: object) -> BatchView:
    base: dict[str, object] = {
        "id": "batch_1",
        "status": "in_progress",
        "in_progress_at": 1_000,
        "request_counts": {"total": 10_000, "completed": 2_400, "failed": 100},
        "usage": {"input_tokens": 50_000, "output_tokens": 100_000, "total_tokens": 150_000},
        "gpu_seconds": 400.0,
        "boxes": {"box-a": 2_500},
        "gpu_price_per_hour": 1.8,
    }
    return BatchView.of(BatchStatus.model_validate({**base, **changes}), NOW)


def test_rates_and_time_left_at_the_current_rate() -> None:
    batch = running()
    assert batch.elapsed_seconds == 100
    assert batch.requests_per_second == 25
    assert batch.tokens_per_second == 1_500
    assert batch.output_tokens_per_second == 1_000
    assert batch.seconds_left == 300  # 7,500 left at 25/s
    # Four shards shared one box: the box time is capped at the wall time on it.
    assert batch.cost_usd == pytest.approx(1.8 * 100 / 3600)
    assert batch.usd_per_million_output_tokens == pytest.approx(0.05 * 10, rel=1e-3)


def test_finished_batch_counts_to_its_end_and_unknown_price_is_null() -> None:
    done = running(status="completed", completed_at=1_050, gpu_price_per_hour=None)
    assert done.elapsed_seconds == 50 and done.seconds_left == 0
    assert done.cost_usd is None and done.usd_per_million_output_tokens is None
    fresh = BatchView.of(BatchStatus(id="batch_2"), NOW)
    assert fresh.requests_per_second is None and fresh.seconds_left is None
    # Timestamps are whole seconds: a batch done within one counts as one second.
    quick = running(status="completed", completed_at=1_000)
    assert quick.elapsed_seconds == 0 and quick.requests_per_second == 2_500


def test_the_memo_never_stores_computed_fields() -> None:
    memo = running().stored().memo()
    assert "cost_usd" not in memo and "requests_per_second" not in memo
    assert memo["gpu_price_per_hour"] == 1.8
    assert running().stored().memo("status", "cost_usd") == {"status": "in_progress"}


def test_cost_uses_slot_time_when_it_is_less_than_box_time() -> None:
    assert batch_cost_usd(3.6, gpu_seconds=10, elapsed_s=100, box_count=1) == pytest.approx(0.01)
    assert batch_cost_usd(3.6, gpu_seconds=500, elapsed_s=100, box_count=2) == pytest.approx(0.2)
    assert batch_cost_usd(0.0, gpu_seconds=500, elapsed_s=100, box_count=2) is None


def test_cost_is_the_sum_over_boxes_at_each_box_price() -> None:
    boxes = {
        "box-a": BoxCost(gpu_seconds=60, price_per_hour=0.36),
        "box-b": BoxCost(gpu_seconds=30, price_per_hour=1.8),
    }
    # 60 s at $0.36/h + 30 s at $1.80/h; the batch's own price is not used for them.
    expected = 0.36 * 60 / 3600 + 1.8 * 30 / 3600
    assert batch_cost_usd(9.0, 90, 100, 2, boxes) == pytest.approx(expected)
    assert batch_cost_usd(None, 90, 100, 2, boxes) == pytest.approx(expected)
    # Each box's slot time is capped at the batch's wall time on it, box by box.
    assert batch_cost_usd(None, 90, 40, 2, boxes) == pytest.approx(
        0.36 * 40 / 3600 + 1.8 * 30 / 3600
    )


def test_a_box_without_a_price_falls_back_to_the_batch_price() -> None:
    boxes = {
        "box-a": BoxCost(gpu_seconds=36, price_per_hour=1.0),
        "box-b": BoxCost(gpu_seconds=36, price_per_hour=None),
    }
    assert batch_cost_usd(2.0, 72, 100, 2, boxes) == pytest.approx(0.01 + 0.02)
    assert batch_cost_usd(0.0, 72, 100, 2, boxes) is None  # box-b's price is unknown
    # Slot time of shards no box claimed is paid at the batch's price.
    assert batch_cost_usd(2.0, 108, 100, 2, boxes) == pytest.approx(0.01 + 0.02 + 0.02)


def test_progress_keeps_each_box_time_and_the_price_its_shards_reported() -> None:
    progress = BatchProgress()
    progress.add(ShardResult(0, 5, 0, gpu_seconds=10.0, box="a", price_per_hour=0.4))
    progress.add(ShardResult(1, 5, 0, gpu_seconds=20.0, box="b"))
    progress.add(ShardResult(2, 4, 1, gpu_seconds=5.5, box="a", price_per_hour=0.4))
    assert progress.box_costs() == {
        "a": BoxCost(gpu_seconds=15.5, price_per_hour=0.4),
        "b": BoxCost(gpu_seconds=20.0, price_per_hour=None),
    }
    assert progress.boxes == {"a": 10, "b": 5}


def test_status_shows_the_cost_of_each_box() -> None:
    batch = running(
        gpu_seconds=130.0,
        boxes={"box-a": 1_500, "box-b": 1_000},
        gpu_price_per_hour=1.8,
        box_costs={
            "box-a": {"gpu_seconds": 90.0, "price_per_hour": 0.36},
            "box-b": {"gpu_seconds": 40.0},
        },
    )
    assert batch.box_costs["box-a"] == BoxCost(
        gpu_seconds=90.0, price_per_hour=0.36, cost_usd=0.009
    )
    # box-b published no price of its own: the batch's stands for it.
    assert batch.box_costs["box-b"] == BoxCost(gpu_seconds=40.0, price_per_hour=1.8, cost_usd=0.02)
    assert batch.cost_usd == pytest.approx(0.029)
    # A batch published before the breakdown keeps its single-price cost.
    assert running().box_costs == {} and running().cost_usd == pytest.approx(0.05)


def test_price_from_vastai_instances() -> None:
    rows = [
        {"id": 1, "ssh_host": "ssh4.vast.ai", "public_ipaddr": "1.2.3.4", "dph_total": 0.42},
        {"id": 2, "ssh_host": "ssh5.vast.ai", "public_ipaddr": "5.6.7.8", "dph_total": 1.5},
    ]
    assert price_from_instances(rows, "5.6.7.8") == 1.5
    assert price_from_instances(rows, "ssh4.vast.ai") == 0.42
    assert price_from_instances(rows, "") == 0.0  # two boxes, none named: unknown
    assert price_from_instances(rows[:1], "") == 0.42
    assert price_from_instances({"error": "no key"}, "") == 0.0


def test_dashboard_upload_becomes_a_batch_body() -> None:
    body = batch_body(
        b'{"custom_id": "a", "prompt": "x"}\n\n', "/v1/completions", '{"n": 1}', "2", "5"
    )
    assert body == {
        "items": [{"custom_id": "a", "prompt": "x"}],
        "endpoint": "/v1/completions",
        "defaults": {"n": 1},
        "max_cost_usd": 2.0,
        "shard_size": 5,
    }
    for payload, defaults, budget, message in (
        (b"{}\n{oops\n", None, None, "line 2 of the file is not JSON"),
        (b"\n\n", None, None, "the file has no request lines"),
        (b"{}\n", "[1]", None, "defaults must be a JSON object"),
        (b"{}\n", None, "lots", "budget must be a number of dollars"),
    ):
        with pytest.raises(ValueError, match=message):
            batch_body(payload, None, defaults, budget)
