"""The fault matrix: each part of the stack goes away a quarter into a batch and comes back;
every custom_id comes back exactly once. The time each fault costs (batch duration against
an undisturbed run) is printed (`-s`) and written to fault-matrix.json next to the stack's
data; it is a figure to read, never asserted."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from harness import batches
from harness.stack import Stack

pytestmark = pytest.mark.integration

ITEMS = 800
SHARD = 50
DOWN_SECONDS = 3.0
TIMES: dict[str, float] = {}


def _stop_start(program: str) -> Callable[[Stack], None]:
    def fault(stack: Stack) -> None:
        assert f"{program}: stopped" in stack.supervisorctl("stop", program)
        time.sleep(DOWN_SECONDS)
        assert f"{program}: started" in stack.supervisorctl("start", program)

    return fault


def _kill(program: str) -> Callable[[Stack], None]:
    """An on-demand worker dies (SIGKILL); the API starts it again for the backlog."""

    def fault(stack: Stack) -> None:
        pid = stack.program_pid(program)
        assert pid > 0, f"{program} is not running"
        os.kill(pid, signal.SIGKILL)

    return fault


def _whole_stack(stack: Stack) -> None:
    stack.stop()  # supervisord and every program, by pid
    time.sleep(DOWN_SECONDS)
    stack.start()


def _none(stack: Stack) -> None:
    pass


FAULTS: dict[str, Callable[[Stack], None]] = {
    "none": _none,  # the undisturbed run the others are compared with
    "s3": _stop_start("minio"),
    "temporal": _stop_start("temporal"),
    "llama-server": _stop_start("llama"),
    "api": _stop_start("fastapi"),
    "worker-cpu": _kill("worker-cpu"),
    "worker-gpu": _kill("worker-gpu"),
    "whole-stack": _whole_stack,
}


@pytest.fixture(scope="module")
def report(stack: Stack) -> Iterator[dict[str, float]]:
    yield TIMES
    if not TIMES:
        return
    base = TIMES.get("none")
    rows = [f"{'fault':<14} {'batch s':>8} {'cost s':>7}"]
    for name, seconds in TIMES.items():
        cost = f"{seconds - base:>7.1f}" if base is not None else "      -"
        rows.append(f"{name:<14} {seconds:>8.1f} {cost}")
    print("\nfault matrix (" + f"{ITEMS} requests, {SHARD} a shard, {DOWN_SECONDS:g}s down)")
    print("\n".join(rows))
    path = stack.data_dir.parent / "fault-matrix.json"
    path.write_text(json.dumps({"items": ITEMS, "shard": SHARD, "seconds": TIMES}, indent=1))


def _status(stack: Stack, batch_id: str) -> dict | None:
    """The batch, or None while the API itself is away."""
    try:
        response = stack.http.get(f"/batch/{batch_id}", timeout=10)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _wait(stack: Stack, batch_id: str, done: Callable[[dict], bool], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    batch: dict | None = None
    while time.monotonic() < deadline:
        batch = _status(stack, batch_id)
        if batch is not None and done(batch):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} stuck: {batch}\n{stack.logs_tail(20)}")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_part_going_away_a_quarter_into_a_batch_only_delays_it(
    stack: Stack, report: dict[str, float], fault: str
) -> None:
    prefix = f"fm-{fault}-"
    started = time.monotonic()
    batch = batches.submit(
        stack, items=batches.chat_items(ITEMS, prefix=prefix, max_tokens=16), shard_size=SHARD
    )
    _wait(stack, batch["id"], lambda b: b["request_counts"]["completed"] >= ITEMS // 4, 180)
    FAULTS[fault](stack)
    stack.wait_healthy(180)
    done = _wait(stack, batch["id"], lambda b: b["status"] in batches.TERMINAL, 600)
    report[fault] = time.monotonic() - started
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    batches.assert_exactly_once(
        batches.results(stack, batch["id"]), {f"{prefix}{i}" for i in range(ITEMS)}
    )
    assert batches.errors(stack, batch["id"]) == []
