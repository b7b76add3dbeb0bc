"""Offer filters: cheapest first, one box per machine, and the filter that emptied the list."""

from __future__ import annotations

from deploy import offers
from harness.fake_vast import matches, offer


def test_cheapest_fitting_offers_one_per_machine() -> None:
    market = [
        offer(1, price=0.50),
        offer(2, price=0.30),
        offer(3, price=0.31, machine_id=1002),  # same machine as offer 2
        offer(4, price=0.20, gpu_ram=8000),  # too little GPU RAM
        offer(5, price=0.35),
    ]
    chosen = offers.choose(market, offers.Needs(count=2, max_price=0.45, gpu_ram_gb=20))
    assert [o["id"] for o in chosen] == [2, 5]


def test_interruptible_price_is_the_bid() -> None:
    ask = offer(1, price=0.50, min_bid=0.20)
    assert offers.price(ask, offers.Needs(interruptible=True, bid=0.25)) == 0.25
    assert offers.price(ask, offers.Needs(interruptible=True)) == 0.22
    assert offers.price(ask, offers.Needs()) == 0.50


def test_why_empty_names_the_filter_that_emptied_the_list() -> None:
    market = [offer(1, price=0.5), offer(2, price=0.6, cuda_max_good=11.8)]
    assert "GPU name in H100 SXM" in offers.why_empty(market, offers.Needs(gpu_names=["H100_SXM"]))
    assert "GPU RAM >= 80 GB" in offers.why_empty(market, offers.Needs(gpu_ram_gb=80))
    message = offers.why_empty(market, offers.Needs(max_price=0.1))
    assert message == "none left after max price <= $0.1/h (1 before it)"
    only_old_cuda = [offer(2, cuda_max_good=11.8)]
    assert "CUDA >= 12.4" in offers.why_empty(only_old_cuda, offers.Needs())
    no_direct = [offer(3, direct_port_count=0)]
    assert "direct SSH port" in offers.why_empty(no_direct, offers.Needs())
    assert "no rentable on-demand offer" in offers.why_empty([], offers.Needs())


def test_server_query_agrees_with_the_local_filters() -> None:
    needs = offers.Needs(max_price=0.45, gpu_names=["RTX_4090"], gpu_ram_gb=20)
    market = [offer(1, price=0.4), offer(2, price=0.5), offer(3, gpu="RTX 3090", price=0.3)]
    query = offers.query(needs)
    assert [o["id"] for o in market if matches(o, query)] == [1]
    assert [o["id"] for o in offers.choose(market, needs)] == [1]


def test_gpu_ram_estimate_covers_model_and_context(tmp_path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"\0" * 1000)
    assert offers.gpu_ram_for_model(str(tmp_path / "missing.gguf"), 4, 2048) == 16.0
    # 8 GB of weights and 4 x 8192 tokens of KV cache at 128 KiB each: 12.3 GB, +10%, +1.
    assert offers.gpu_ram_needed_gb(8_000_000_000, 4 * 8192, 128 * 1024) == 14.5
