"""The llama-server client the GPU worker drives.

It sends exactly as many concurrent requests as llama-server has slots (read from /props),
turns each answer into an OpenAI batch output line, and tells permanent failures (the
request itself is wrong: a 4xx) from transient ones (connection refused, 503 while the
model loads, timeouts, 5xx). Transient failures are retried here, per request, with
backoff: retrying the whole activity instead would redo every finished request of its
shard. Every answer and failure also goes to the box's `LlamaHealth`: a shard whose
llama-server stays down past LLAMA_DOWN_HANDOVER_SECONDS is handed to another box (see
`run_shard`), and single requests keep retrying for the request's own budget.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from kernel.endpoints import EMBEDDINGS_OFF_CODE, EMBEDDINGS_OFF_MESSAGE
from workers.health import CHECK_TIMEOUT_SECONDS, PROBE_TIMEOUT_SECONDS, LlamaHealth

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class LlamaUnavailable(Exception):
    """llama-server did not answer successfully for longer than the retry budget."""


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def output_line(
    custom_id: str, status_code: int, body: Any, request_id: str, error: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": error,
    }


def _error_message(body: Any, status_code: int) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return f"llama-server answered HTTP {status_code}"


class SlotGate:
    """At most `size` requests at once; urgent ones (single /process requests) are served
    before the queued requests of batch shards, which would otherwise delay them by minutes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._used = 0
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._bulk: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def slot(self, urgent: bool = False) -> AsyncIterator[None]:
        if self._used < self.size and not self._urgent and not self._bulk:
            self._used += 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue = self._urgent if urgent else self._bulk
            queue.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # the slot was handed over just as we were cancelled
                elif waiter in queue:
                    queue.remove(waiter)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        for queue in (self._urgent, self._bulk):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # hand the slot over; the count stays
                    return
        self._used -= 1


class RetryBudget:
    """How long a request may keep failing transiently, counted from `start()` (its first
    call wins)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadline: float | None = None

    def start(self) -> None:
        if self._deadline is None:
            self._deadline = asyncio.get_running_loop().time() + self.seconds

    def left(self) -> float:
        if self._deadline is None:
            return self.seconds
        return self._deadline - asyncio.get_running_loop().time()


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class LlamaClient:
    """aiohttp rather than httpx: on a box whose few cores also feed llama-server, its
    third of the CPU per request is measurable throughput (0.5 vs 1.6 ms a request here)."""

    def __init__(
        self,
        base_url: str,
        request_timeout: float = 600.0,
        retry_budget_seconds: float = 600.0,
        health: LlamaHealth | None = None,
    ) -> None:
        self.base_url = base_url
        self.retry_budget_seconds = retry_budget_seconds
        self.health = health or LlamaHealth(0.0, base_url)
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, connect=5.0)
        self._session: aiohttp.ClientSession | None = None
        self._slots = 0
        self._gate = SlotGate(1)
        self._slots_lock = asyncio.Lock()

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use, inside the worker's event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                self.base_url,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=256),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Answer:
        options: dict[str, Any] = {"json": body} if body is not None else {}
        if timeout is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=timeout)
        async with self._http().request(method, path, **options) as response:
            return Answer(response.status, await response.read())

    async def check_health(self) -> None:
        """One `/health` probe, no retries, recorded in `self.health` (200: it answers; a
        refused connection, 503 while a model loads, or no answer in time: it does not)."""
        started = time.monotonic()
        try:
            answer = await self._request("GET", "/health", timeout=PROBE_TIMEOUT_SECONDS)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.health.failed(f"GET /health: {exc!r}", since=started)
            return
        if answer.status == 200:
            self.health.answered()
        else:
            self.health.failed(f"GET /health: HTTP {answer.status}", since=started)

    async def check_request(self) -> None:
        """One tiny real request (a single token), no retries, while requests are failing:
        a success clears the failing stretch (one bad prompt on a sound server), a 5xx or no
        answer within CHECK_TIMEOUT_SECONDS extends it (a sick server)."""
        started = time.monotonic()
        body = {"prompt": "ok", "n_predict": 1, "cache_prompt": False}
        try:
            answer = await self._request("POST", "/completion", body, CHECK_TIMEOUT_SECONDS)
        except TimeoutError:
            self.health.request_failed("check request: no answer in time", since=started)
            return
        except (aiohttp.ClientError, OSError) as exc:
            self.health.failed(f"check request: {exc!r}", since=started)
            return
        if answer.status in TRANSIENT_STATUS:
            self.health.request_failed(f"check request: HTTP {answer.status}")
        else:
            self.health.request_answered()

    async def slots(self, refresh: bool = False) -> int:
        """llama-server's slot count; waits (with the retry budget) while it is down."""
        if self._slots and not refresh:
            return self._slots
        async with self._slots_lock:  # one /props call, however many requests wait on it
            if self._slots and not refresh:
                return self._slots
            return await self._fetch_slots()

    async def _fetch_slots(self) -> int:
        answer = await self._with_retries(
            lambda: self._request("GET", "/props", timeout=5.0), "GET /props"
        )
        slots = int(json.loads(answer.body).get("total_slots") or 1)
        if slots != self._slots:
            logger.info("llama-server at %s has %d slot(s)", self.base_url, slots)
            self._slots = slots
            self._gate.size = slots
        return slots

    async def _with_retries(
        self,
        send: Callable[[], Awaitable[Answer]],
        what: str,
        budget: RetryBudget | None = None,
        request: bool = False,
    ) -> Answer:
        """Sends until the answer is not transient or `budget` (started now when not given)
        runs out. For a `request` (a prompt, not a look at the server), a 500 still answered
        when the budget runs out is returned: one bad prompt on a server that answers
        others becomes its own error line rather than failing its whole shard (a server
        failing every request is handed over long before, see workers/health.py)."""
        if budget is None:
            budget = RetryBudget(self.retry_budget_seconds)
            budget.start()
        delay = 0.25
        while True:
            try:
                answer = await send()
                if answer.status not in TRANSIENT_STATUS:
                    if request:
                        self.health.request_answered()
                    else:
                        self.health.answered()
                    return answer
                problem = f"HTTP {answer.status}"
                # It answers, with a failure: counted as a request failing, not as down.
                self.health.request_failed(f"{what}: {problem}")
            except (aiohttp.ClientError, TimeoutError) as exc:  # refused, reset, timeouts
                answer = None
                problem = repr(exc)
                self.health.failed(f"{what}: {problem}")
                if isinstance(exc, TimeoutError):
                    self.health.request_failed(f"{what}: {problem}")
            if budget.left() < delay:
                if request and answer is not None and answer.status == 500:
                    logger.warning("%s: HTTP 500 for %gs; failing this line", what, budget.seconds)
                    return answer
                raise LlamaUnavailable(
                    f"{what}: llama-server at {self.base_url} failing for "
                    f"{self.retry_budget_seconds:g}s, last: {problem}"
                )
            logger.warning("%s: %s; retrying in %.1fs", what, problem, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 5.0)

    async def run(
        self, custom_id: str, url: str, body: dict[str, Any], urgent: bool = False
    ) -> dict[str, Any]:
        """One request → one output line (`error` set when the request itself failed)."""
        await self.slots()
        request_id = new_request_id()
        # Counted from the first slot: the time spent queued behind the other requests of
        # a shard (minutes, on a busy box) is not llama-server failing.
        budget = RetryBudget(self.retry_budget_seconds)

        async def send() -> Answer:
            async with self._gate.slot(urgent):
                budget.start()
                return await self._request("POST", url, body)

        answer = await self._with_retries(send, f"{custom_id}: POST {url}", budget, request=True)
        try:
            payload: Any = json.loads(answer.body)
        except ValueError:
            payload = {"error": {"message": answer.body[:2000].decode(errors="replace")}}
        if answer.status == 200:
            return output_line(custom_id, 200, payload, request_id, None)
        error = {
            "code": f"llama_http_{answer.status}",
            "message": _error_message(payload, answer.status),
        }
        if answer.status == 501 and url.rstrip("/").endswith("/embeddings"):
            error = {"code": EMBEDDINGS_OFF_CODE, "message": EMBEDDINGS_OFF_MESSAGE}
        return output_line(custom_id, answer.status, payload, request_id, error)
