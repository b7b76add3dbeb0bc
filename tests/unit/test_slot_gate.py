from __future__ import annotations

import asyncio

import pytest

from workers.llama import Answer, LlamaClient, LlamaUnavailable, SlotGate


async def test_gate_limits_concurrency_and_serves_urgent_requests_first() -> None:
    gate = SlotGate(2)
    running = 0
    peak = 0
    order: list[str] = []

    async def request(name: str, urgent: bool = False) -> None:
        nonlocal running, peak
        async with gate.slot(urgent):
            running += 1
            peak = max(peak, running)
            order.append(name)
            await asyncio.sleep(0.01)
            running -= 1

    bulk = [asyncio.create_task(request(f"b{i}")) for i in range(6)]
    await asyncio.sleep(0)  # two bulk requests hold the slots, four wait
    urgent = asyncio.create_task(request("u", urgent=True))
    await asyncio.gather(*bulk, urgent)
    assert peak == 2
    assert order.index("u") == 2, order


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    gate = SlotGate(1)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await holder
    async with asyncio.timeout(1):
        async with gate.slot():
            pass


def _client_with_one_slot(budget: float, answers: list[int]) -> LlamaClient:
    """A client that knows llama-server has one slot, whose sends answer `answers` in turn
    (an HTTP status each; 200 once they run out)."""
    client = LlamaClient("http://127.0.0.1:9", retry_budget_seconds=budget)
    client._slots = 1
    client._gate = SlotGate(1)

    async def answer(method: str, path: str, body: object = None, timeout: object = None) -> Answer:
        status = answers.pop(0) if answers else 200
        return Answer(
            status, b'{"error": {"message": "loading model"}}' if status != 200 else b"{}"
        )

    client._request = answer  # type: ignore[method-assign]
    return client


async def _hold_the_slot(client: LlamaClient, seconds: float) -> asyncio.Task[None]:
    async def hold() -> None:
        async with client._gate.slot():
            await asyncio.sleep(seconds)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    return holder


async def test_retry_budget_counts_from_the_slot_not_from_the_queue() -> None:
    """A request queued behind others longer than its budget still gets its retries."""
    client = _client_with_one_slot(budget=0.4, answers=[503])
    holder = await _hold_the_slot(client, 0.6)
    line = await client.run("late", "/v1/chat/completions", {"messages": []})
    await holder
    assert line["response"]["status_code"] == 200
    assert line["error"] is None


async def test_retry_budget_still_ends_a_request_that_keeps_failing() -> None:
    client = _client_with_one_slot(budget=0.4, answers=[503] * 100)
    holder = await _hold_the_slot(client, 0.6)
    with pytest.raises(LlamaUnavailable, match="failing for 0.4s, last: HTTP 503"):
        await client.run("down", "/v1/chat/completions", {"messages": []})
    await holder
