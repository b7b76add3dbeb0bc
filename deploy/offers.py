"""Which Vast.ai offers fit: what the model and image need, and the user's limits.

The search sends every filter to the server (the API's query form, `{"field": {"op": v}}`)
and orders by price. When nothing comes back, a second search with only the server's own
defaults is filtered here, one filter at a time in the order below, to say which filter
emptied the list ("no offer fits: none left after max price <= $0.20/h (12 before it)").

Offer fields used (REST units): `gpu_name`, `num_gpus`, `gpu_ram` (MB per GPU),
`cuda_max_good` (highest CUDA the host driver runs), `disk_space` (GB free),
`reliability2` (0-1), `direct_port_count`, `dph_total` (USD/h on demand, with storage),
`min_bid` (USD/h, interruptible), `id`, `machine_id`, `geolocation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The project's image is built FROM ghcr.io/ggml-org/llama.cpp:server-cuda (CUDA 12.4).
IMAGE_CUDA = 12.4
DEFAULT_DISK_GB = 40.0
DEFAULT_RELIABILITY = 0.98
# An interruptible bid this much above the offer's min_bid, unless --bid is given: a little
# headroom so the first competing bid does not pause the box at once.
BID_HEADROOM = 1.10


def gpu_ram_needed_gb(model_bytes: int, context_tokens: int, kv_bytes_per_token: int) -> float:
    """GPU memory for the weights plus the KV cache of every slot, plus 1 GB of CUDA buffers
    and 10% of headroom."""
    total = model_bytes + context_tokens * kv_bytes_per_token
    return round(total * 1.10 / 1e9 + 1.0, 1)


def gpu_ram_for_model(model: str, parallel: int, ctx_per_slot: int) -> float:
    """Estimate from the model file when it is on this machine; 16 GB otherwise. The KV
    cache is taken at 128 KiB a token (an 8B model with grouped-query attention at f16)."""
    path = Path(model) if model else None
    if path is None or not path.is_file():
        return 16.0
    return gpu_ram_needed_gb(path.stat().st_size, parallel * ctx_per_slot, 128 * 1024)


@dataclass
class Needs:
    """What a box must have (from the model and image) and what the user allows."""

    count: int = 1
    max_price: float = math.inf  # USD per hour per box
    gpu_names: list[str] = field(default_factory=list)
    gpu_ram_gb: float = 16.0
    cuda: float = IMAGE_CUDA
    disk_gb: float = DEFAULT_DISK_GB
    reliability: float = DEFAULT_RELIABILITY
    direct_ssh: bool = True
    interruptible: bool = False
    bid: float | None = None  # USD per hour; None: min_bid x BID_HEADROOM


def price(offer: dict[str, Any], needs: Needs) -> float:
    """What the box would cost per hour: dph_total on demand; the bid when interruptible."""
    if needs.interruptible:
        if needs.bid is not None:
            return needs.bid
        return round(float(offer.get("min_bid") or 0.0) * BID_HEADROOM, 4)
    return float(offer.get("dph_total") or 0.0)


def _gpu_names(names: list[str]) -> list[str]:
    # Vast spells names with spaces ("RTX 4090"); the CLI takes underscores.
    return [name.replace("_", " ") for name in names]


def filters(needs: Needs) -> list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], bool]]]:
    """(what the user reads, the server query, the same test here), in diagnosis order."""
    names = _gpu_names(needs.gpu_names)
    checks: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        ("one GPU per box", {"num_gpus": {"eq": 1}}, lambda o: int(o.get("num_gpus") or 0) == 1),
    ]
    if names:
        checks.append(
            (
                f"GPU name in {', '.join(names)}",
                {"gpu_name": {"in": names}},
                lambda o: str(o.get("gpu_name")) in names,
            )
        )
    checks += [
        (
            f"GPU RAM >= {needs.gpu_ram_gb:g} GB (model + context)",
            {"gpu_ram": {"gte": needs.gpu_ram_gb * 1000}},
            lambda o: float(o.get("gpu_ram") or 0) >= needs.gpu_ram_gb * 1000,
        ),
        (
            f"CUDA >= {needs.cuda:g} (the image's)",
            {"cuda_max_good": {"gte": needs.cuda}},
            lambda o: float(o.get("cuda_max_good") or 0) >= needs.cuda,
        ),
        (
            f"disk >= {needs.disk_gb:g} GB",
            {"disk_space": {"gte": needs.disk_gb}},
            lambda o: float(o.get("disk_space") or 0) >= needs.disk_gb,
        ),
        (
            f"reliability >= {needs.reliability:g}",
            {"reliability2": {"gte": needs.reliability}},
            lambda o: float(o.get("reliability2") or 0) >= needs.reliability,
        ),
    ]
    if needs.direct_ssh:
        checks.append(
            (
                "a direct SSH port",
                {"direct_port_count": {"gte": 1}},
                lambda o: int(o.get("direct_port_count") or 0) >= 1,
            )
        )
    if math.isfinite(needs.max_price):
        field_name = "min_bid" if needs.interruptible else "dph_total"
        checks.append(
            (
                f"max price <= ${needs.max_price:g}/h",
                {field_name: {"lte": needs.max_price}},
                lambda o: price(o, needs) <= needs.max_price + 1e-9,
            )
        )
    return checks


def query(needs: Needs) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for _, part, _ in filters(needs):
        merged.update(part)
    return merged


def choose(offers: list[dict[str, Any]], needs: Needs) -> list[dict[str, Any]]:
    """The cheapest offers that pass every filter, at most one per machine, up to count."""
    fitting = [offer for offer in offers if all(test(offer) for _, _, test in filters(needs))]
    fitting.sort(key=lambda offer: (price(offer, needs), -float(offer.get("reliability2") or 0)))
    chosen: list[dict[str, Any]] = []
    machines: set[Any] = set()
    for offer in fitting:
        machine = offer.get("machine_id", offer.get("id"))
        if machine in machines:
            continue
        machines.add(machine)
        chosen.append(offer)
        if len(chosen) == needs.count:
            break
    return chosen


def why_empty(offers: list[dict[str, Any]], needs: Needs) -> str:
    """Which filter left no offer, applying them in order to the unfiltered list."""
    if not offers:
        kind = "interruptible" if needs.interruptible else "on-demand"
        return f"the marketplace lists no rentable {kind} offer at all"
    remaining = offers
    for label, _, test in filters(needs):
        kept = [offer for offer in remaining if test(offer)]
        if not kept:
            return f"none left after {label} ({len(remaining)} before it)"
        remaining = kept
    return f"only {len(remaining)} machine(s) fit, {needs.count} wanted"
