from __future__ import annotations

import asyncio

from workers.llama import SlotGate


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
