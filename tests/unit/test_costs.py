"""Per-batch rates, time left and cost (the read view, kernel.view), the box price from
`vastai show instances`, and the dashboard's upload parsing."""

from __future__ import annotations

import pytest

from app.services.pricing import price_from_instances
from app.web.server import batch_body
from kernel.status import BatchStatus
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
