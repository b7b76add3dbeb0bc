"""The box price per hour that batch costs are computed with.

GPU_PRICE_PER_HOUR wins when set, then BOX_PRICE_PER_HOUR (the price the autopilot rented
this box at). Otherwise, when the `vastai` CLI is installed and
configured (its API key stored by `vastai set api-key`), the price of the instance this API
runs on (or the one VAST_HOST names) is read from `vastai show instances --raw` (`dph_total`,
USD per hour) and kept for PRICE_CACHE_SECONDS. Without either, costs are unknown (null).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from typing import Any

from kernel.config import Settings

logger = logging.getLogger(__name__)

PRICE_CACHE_SECONDS = 600.0
VASTAI_TIMEOUT_SECONDS = 10.0
_cache: dict[str, tuple[float, float]] = {}


def price_from_instances(instances: Any, host: str) -> float:
    """`dph_total` of the instance reached at `host` (or of the only one); 0 when unknown."""
    if not isinstance(instances, list):
        return 0.0
    rows = [row for row in instances if isinstance(row, dict)]
    if host:
        matching = [row for row in rows if host in (row.get("ssh_host"), row.get("public_ipaddr"))]
        rows = matching or rows
    if len(rows) != 1:
        return 0.0
    try:
        return max(0.0, float(rows[0].get("dph_total") or 0.0))
    except (TypeError, ValueError):
        return 0.0


async def _vastai_price(host: str) -> float:
    binary = shutil.which("vastai")
    if binary is None:
        return 0.0
    try:
        process = await asyncio.create_subprocess_exec(
            binary,
            "show",
            "instances",
            "--raw",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(process.communicate(), VASTAI_TIMEOUT_SECONDS)
        return price_from_instances(json.loads(out or b"null"), host)
    except (OSError, TimeoutError, ValueError) as exc:
        logger.info("vastai show instances gave no price: %s", exc)
        return 0.0


async def gpu_price_per_hour(settings: Settings) -> float:
    """USD per hour of one GPU box; 0.0 when unknown."""
    if settings.GPU_PRICE_PER_HOUR > 0:
        return settings.GPU_PRICE_PER_HOUR
    if settings.BOX_PRICE_PER_HOUR > 0:  # a box the autopilot rented knows its own price
        return settings.BOX_PRICE_PER_HOUR
    cached = _cache.get(settings.VAST_HOST)
    if cached is not None and time.monotonic() - cached[1] < PRICE_CACHE_SECONDS:
        return cached[0]
    price = await _vastai_price(settings.VAST_HOST)
    _cache[settings.VAST_HOST] = (price, time.monotonic())
    return price
