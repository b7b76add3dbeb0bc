"""The GPU worker's box record: slots, requests in flight, rates, published to the bucket
every BOX_REPORT_SECONDS at `boxes/{BOX_NAME}.json`.

The batch workflow sizes its window from these records (the capacity activity) and
`GET /queues` lists them. A box that stops writing (worker killed, box unreachable) goes
stale after BOX_LIVE_SECONDS; one whose llama-server is down reports 0 slots.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
from minio import Minio

from kernel.boxes import BOX_REPORT_SECONDS, BoxRecord
from kernel.keys import box_key
from kernel.periodic import Periodic
from kernel.storage import put_bytes
from workers.llama import LlamaClient

logger = logging.getLogger(__name__)

PROPS_TIMEOUT_SECONDS = 2.0


class MeteredLlama(LlamaClient):
    """The llama-server client, counting what the box record reports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = 0
        self.requests_total = 0
        self.output_tokens_total = 0

    async def run(
        self, custom_id: str, url: str, body: dict[str, Any], urgent: bool = False
    ) -> dict[str, Any]:
        self.in_flight += 1
        try:
            line = await super().run(custom_id, url, body, urgent)
        finally:
            self.in_flight -= 1
        self.requests_total += 1
        response_body = (line.get("response") or {}).get("body")
        usage = response_body.get("usage") if isinstance(response_body, dict) else None
        if isinstance(usage, dict):
            self.output_tokens_total += int(usage.get("completion_tokens") or 0)
        return line

    async def probe_slots(self) -> int:
        """llama-server's slots now, 0 when it does not answer (no retries: a report must
        not wait for a server that is down)."""
        try:
            answer = await self._request("GET", "/props", timeout=PROPS_TIMEOUT_SECONDS)
            if answer.status != 200:
                return 0
            return int(json.loads(answer.body).get("total_slots") or 0)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, AttributeError):
            return 0


class BoxReporter:
    def __init__(
        self,
        s3: Minio,
        bucket: str,
        box: str,
        task_queue: str,
        llama: MeteredLlama,
        shard_room: int,
        interval: float = BOX_REPORT_SECONDS,
        price_per_hour: float = 0.0,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.box = box
        self.task_queue = task_queue
        self.llama = llama
        self.shard_room = shard_room
        self.interval = interval
        self.price_per_hour = price_per_hour
        self._loop = Periodic(
            "box-reporter", self.report_once, interval, logger, f"box {box}: publishing its record"
        )
        self._last = (time.monotonic(), 0, 0)

    async def record(self) -> BoxRecord:
        slots = await self.llama.probe_slots()
        now = time.monotonic()
        then, requests, tokens = self._last
        elapsed = max(now - then, 1e-6)
        self._last = (now, self.llama.requests_total, self.llama.output_tokens_total)
        return BoxRecord(
            box=self.box,
            task_queue=self.task_queue,
            slots=slots,
            shard_room=self.shard_room,
            in_flight=self.llama.in_flight,
            requests_per_s=round((self.llama.requests_total - requests) / elapsed, 2),
            tokens_per_s=round((self.llama.output_tokens_total - tokens) / elapsed, 1),
            requests_total=self.llama.requests_total,
            last_seen=round(time.time(), 3),
            price_per_hour=self.price_per_hour,
        )

    def _put(self, record: BoxRecord) -> None:
        payload = record.model_dump_json().encode()
        put_bytes(self.s3, self.bucket, box_key(self.box), payload, content_type="application/json")

    async def report_once(self) -> BoxRecord:
        record = await self.record()
        await asyncio.to_thread(self._put, record)
        return record

    def start(self) -> None:
        if not self._loop.running:
            logger.info("box %s reports to %s every %gs", self.box, self.bucket, self.interval)
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
