"""Two GPU boxes on one machine drain one batch: a second llama-server (other slot count)
and a second GPU worker (other BOX_NAME) against the same Temporal, S3 and queues.

Both boxes answer requests; the window follows their slots; a box lost mid-batch (its
worker and llama-server SIGKILLed, its llama-server alone SIGKILLed, or the whole box frozen
by SIGSTOP as behind a network partition) hands its shards to the other; every custom_id
comes back exactly once, and a frozen box that comes back writes nothing over them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client
from temporalio.worker import Worker

from harness import batches
from harness.fleet import Box
from harness.stack import Stack, start_stack
from kernel.inputs import (
    BatchInput,
    CapacityInput,
    CapacityResult,
    MergeInput,
    MergeResult,
    ShardInput,
    ShardResult,
    SplitInput,
    SplitResult,
)
from kernel.keys import results_prefix
from kernel.results import ShardResults
from workers.activities.capacity import CapacityActivities
from workers.workflows.batch import BatchWorkflow

pytestmark = pytest.mark.integration

BOX_A_SLOTS = 4
BOX_B_SLOTS = 2
SHARD = 50
ITEMS = 1500


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Box]]:
    base = Path(tmp_path_factory.mktemp("fleet"))
    # BATCH_WINDOW=1: what is in flight beyond one shard comes from the boxes' capacity.
    stack = start_stack(
        base,
        BOX_NAME="box-a",
        LLAMA_PARALLEL=str(BOX_A_SLOTS),
        LLAMA_CTX_PER_SLOT="512",
        BATCH_WINDOW="1",
        WORKER_IDLE_EXIT_SECONDS="120",
    )
    box_b = Box(stack, "box-b", BOX_B_SLOTS, base)
    try:
        box_b.start()
        yield stack, box_b
    finally:
        box_b.stop()
        stack.stop()


def live_boxes(stack: Stack) -> dict[str, dict[str, Any]]:
    response = stack.http.get("/queues")
    assert response.status_code == 200, response.text
    return {box["box"]: box for box in response.json()["boxes"] if box["live"]}


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def first_retry_started(stack: Stack, batch_id: str) -> tuple[float, str] | None:
    """When the first shard attempt after a failed one started (Unix time, from the
    history), and why the attempt before it failed."""

    async def history() -> tuple[float, str] | None:
        client = await Client.connect(stack.env["TEMPORAL_ADDRESS"])
        retries = [
            (
                event.event_time.ToDatetime(tzinfo=UTC).timestamp(),
                event.activity_task_started_event_attributes.last_failure.message,
            )
            async for event in client.get_workflow_handle(batch_id).fetch_history_events()
            if event.HasField("activity_task_started_event_attributes")
            and event.activity_task_started_event_attributes.attempt >= 2
        ]
        return min(retries) if retries else None

    return asyncio.run(history())


@dataclass(frozen=True)
class Retry:
    """A shard attempt after a failed one: when it started (Unix time), where, and why the
    attempt before it failed."""

    started: float
    attempt: int
    identity: str
    cause: str
    cause_type: str


def retries(stack: Stack, batch_id: str) -> list[Retry]:
    """The retried shard attempts of the batch's current run, from its history, in time
    order (an activity's started event is written when its last attempt ends)."""

    async def history() -> list[Retry]:
        client = await Client.connect(stack.env["TEMPORAL_ADDRESS"])
        found = []
        async for event in client.get_workflow_handle(batch_id).fetch_history_events():
            if not event.HasField("activity_task_started_event_attributes"):
                continue
            started = event.activity_task_started_event_attributes
            if started.attempt < 2:
                continue
            failure = started.last_failure
            found.append(
                Retry(
                    started=event.event_time.ToDatetime(tzinfo=UTC).timestamp(),
                    attempt=started.attempt,
                    identity=started.identity,
                    cause=failure.message,
                    cause_type=failure.application_failure_info.type,
                )
            )
        return sorted(found, key=lambda retry: retry.started)

    return asyncio.run(history())


def stored_keys(stack: Stack, batch_id: str) -> set[str]:
    """The result object the readers take for each shard (its latest attempt's)."""
    bucket = stack.env.get("MINIO_BUCKET", "llm-batch")
    return set(ShardResults(stack.s3(), bucket, batch_id).result_keys().values())


def worker_identity_pid(identity: str) -> int:
    """The pid in a worker identity (`worker-gpu@host:pid`)."""
    return int(identity.rsplit(":", 1)[1])


def running_shards(stack: Stack, batch_id: str) -> dict[str, tuple[int, float, int]]:
    """The batch's shard attempts running now, from the workflow's pending activities:
    activity id -> (attempt, when it started (Unix time), the pid of the worker that took it)."""

    async def pending() -> dict[str, tuple[int, float, int]]:
        client = await Client.connect(stack.env["TEMPORAL_ADDRESS"])
        description = await client.get_workflow_handle(batch_id).describe()
        return {
            item.activity_id: (
                item.attempt,
                item.last_started_time.ToDatetime(tzinfo=UTC).timestamp(),
                worker_identity_pid(item.last_worker_identity),
            )
            for item in description.raw_description.pending_activities
            if item.activity_type.name == "run_shard"
            and item.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            and item.last_worker_identity
        }

    return asyncio.run(pending())


def shards_running_on(stack: Stack, batch_id: str, box: Box) -> int:
    """How many of the batch's shards the box's worker is running now."""
    assert box.worker is not None
    pid = box.worker.pid
    return sum(1 for *_, worker in running_shards(stack, batch_id).values() if worker == pid)


def wait_box_busy(stack: Stack, batch_id: str, box: Box, answered: int) -> None:
    """Until the box has answered `answered` requests of the batch and is running a shard
    of it."""
    batches.wait_until(
        stack, batch_id, lambda b: b["boxes"].get(box.name, 0) >= answered, timeout=180
    )
    wait_for(lambda: shards_running_on(stack, batch_id, box) > 0, 120, f"{box.name} busy")


# A shard attempt the box started at most this long ago is far from its end (on a quiet
# machine a box-b shard takes a second or two, on a busy one much longer). The bound widens
# by a second for every ten spent looking, for a machine so busy that looking takes longer.
FRESH_SHARD_SECONDS = 1.0


def strike_while_busy(
    stack: Stack,
    batch_id: str,
    box: Box,
    answered: int,
    fault: Callable[[], None],
    undo: Callable[[], None],
    tries: int = 5,
) -> float:
    """Runs `fault` just after the box started a shard of the batch (having answered
    `answered` of its requests), and returns when (Unix time). A box that finished every
    shard it held between the look and the fault would have nothing to hand over: the fault
    is checked to have found a shard still running there, else undone and struck again."""
    for _ in range(tries):
        batches.wait_until(
            stack, batch_id, lambda b: b["boxes"].get(box.name, 0) >= answered, timeout=180
        )
        assert box.worker is not None
        pid = box.worker.pid
        looking = time.monotonic()

        def fresh(pid: int = pid, looking: float = looking) -> dict[str, int]:
            now = time.time()
            bound = FRESH_SHARD_SECONDS + (time.monotonic() - looking) / 10
            return {
                shard: attempt
                for shard, (attempt, started, worker) in running_shards(stack, batch_id).items()
                if worker == pid and now - started <= bound
            }

        held = wait_for(fresh, 180, f"{box.name} starting a shard")
        fault()
        struck = time.time()
        time.sleep(1.0)  # a shard that had stored its result reports its end by now
        running = running_shards(stack, batch_id)
        if any(running.get(shard, (0,))[0] == attempt for shard, attempt in held.items()):
            return struck
        undo()
    raise AssertionError(f"{box.name} finished its shard before each of {tries} faults")


def stored_results(stack: Stack, batch_id: str, shard_count: int) -> tuple[bytes, list[str]]:
    """What the bucket says the batch's results are (the latest attempt of each shard), and
    every result object it holds."""
    s3 = stack.s3()
    bucket = stack.env.get("MINIO_BUCKET", "llm-batch")
    lines = b"".join(
        line + b"\n" for _, line in ShardResults(s3, bucket, batch_id).lines(shard_count)
    )
    keys = [
        item.object_name or ""
        for item in s3.list_objects(bucket, prefix=results_prefix(batch_id), recursive=True)
    ]
    return lines, sorted(keys)


def both_boxes_live(stack: Stack, box_b: Box) -> None:
    """box-b running (an earlier test may have killed or frozen it) and box-a's on-demand
    worker awake (a tiny batch wakes it), both reporting."""
    box_b.ensure_running()
    if "box-a" not in live_boxes(stack):
        tiny = batches.submit(stack, items=batches.chat_items(2, prefix="wake"), shard_size=1)
        batches.wait_terminal(stack, tiny["id"], timeout=120)
    wait_for(lambda: len(live_boxes(stack)) == 2, 60, "two live boxes")


def test_two_boxes_report_their_slots_and_capacity(fleet: tuple[Stack, Box]) -> None:
    stack, _ = fleet
    # box-a's worker starts on demand: a tiny batch wakes it.
    batch = batches.submit(stack, items=batches.chat_items(4, prefix="w"), shard_size=2)
    batches.wait_terminal(stack, batch["id"], timeout=120)
    boxes = wait_for(lambda: len(live_boxes(stack)) == 2 and live_boxes(stack), 60, "two boxes")
    assert boxes["box-a"]["slots"] == BOX_A_SLOTS
    assert boxes["box-b"]["slots"] == BOX_B_SLOTS
    for box in boxes.values():
        assert set(box) >= {"in_flight", "requests_per_s", "tokens_per_s", "last_seen"}
    capacity = CapacityActivities(stack.s3()).live_capacity(
        CapacityInput(
            bucket=stack.env.get("MINIO_BUCKET", "llm-batch"),
            gpu_task_queue=stack.env["GPU_TASK_QUEUE"],
            shard_size=SHARD,
        )
    )
    # Each box: enough shards to fill its slots (one of 50 requests) plus one to take over.
    assert capacity == CapacityResult(shards=4, boxes=2, slots=BOX_A_SLOTS + BOX_B_SLOTS)


def test_two_batches_share_the_fleet(fleet: tuple[Stack, Box]) -> None:
    stack, box_b = fleet
    both_boxes_live(stack, box_b)
    count = 600
    first, second = (
        batches.submit(
            stack, items=batches.chat_items(count, prefix=p, max_tokens=8), shard_size=SHARD
        )
        for p in ("s", "t")
    )
    done = batches.wait_until(
        stack,
        first["id"],
        lambda b: (
            b["status"] == "completed" or batches.get(stack, second["id"])["status"] == "completed"
        ),
        timeout=600,
    )
    other = batches.get(stack, second["id"])
    # Whichever finished first, the other was served meanwhile: neither waited its turn.
    assert min(done["request_counts"]["completed"], other["request_counts"]["completed"]) > 0
    for batch, prefix in ((first, "s"), (second, "t")):
        finished = batches.wait_terminal(stack, batch["id"], timeout=600)
        assert finished["status"] == "completed", finished
        batches.assert_exactly_once(
            batches.results(stack, batch["id"]), {f"{prefix}{i}" for i in range(count)}
        )


def test_a_box_lost_mid_batch_hands_its_shards_over(fleet: tuple[Stack, Box]) -> None:
    stack, box_b = fleet
    both_boxes_live(stack, box_b)
    started = time.monotonic()
    batch = batches.submit(
        stack, items=batches.chat_items(ITEMS, prefix="f", max_tokens=16), shard_size=SHARD
    )
    killed = strike_while_busy(
        stack, batch["id"], box_b, 2 * SHARD, box_b.kill, box_b.ensure_running
    )
    done = batches.wait_terminal(stack, batch["id"], timeout=600)
    retried = first_retry_started(stack, batch["id"])
    assert retried is not None, "box-b's shards ran again elsewhere"
    handed_over = retried[0] - killed
    elapsed = time.monotonic() - started
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    batches.assert_exactly_once(
        batches.results(stack, batch["id"]), {f"f{i}" for i in range(ITEMS)}
    )
    assert batches.errors(stack, batch["id"]) == []
    per_box = done["boxes"]
    assert set(per_box) == {"box-a", "box-b"} and sum(per_box.values()) == ITEMS
    print(
        f"\nfleet: {ITEMS} requests in {elapsed:.1f}s, per box {per_box}; "
        f"box-b lost, its shards running again on box-a {handed_over:.1f}s later "
        f"(first attempt: {retried[1]})"
    )
    assert "box-b" not in live_boxes(stack) or wait_for(
        lambda: "box-b" not in live_boxes(stack), 60, "box-b to go stale"
    )


def test_a_box_added_mid_batch_takes_shards(fleet: tuple[Stack, Box]) -> None:
    stack, box_b = fleet
    box_b.kill()  # gone already when the test before ran; here it joins mid-batch
    batch = batches.submit(
        stack, items=batches.chat_items(ITEMS, prefix="j", max_tokens=16), shard_size=SHARD
    )
    batches.wait_until(
        stack, batch["id"], lambda b: b["request_counts"]["completed"] >= 2 * SHARD, timeout=180
    )
    box_b.start()
    done = batches.wait_terminal(stack, batch["id"], timeout=600)
    assert done["status"] == "completed", done
    batches.assert_exactly_once(
        batches.results(stack, batch["id"]), {f"j{i}" for i in range(ITEMS)}
    )
    assert done["boxes"].get("box-b", 0) > 0, f"box-b joined but answered nothing: {done}"
    print(f"\nbox-b joined mid-batch: per box {done['boxes']}")


def test_a_box_whose_llama_server_dies_hands_its_shards_over(fleet: tuple[Stack, Box]) -> None:
    """box-b's llama-server is killed and stays down while its worker lives: within about
    LLAMA_DOWN_HANDOVER_SECONDS (10 s) box-b gives its shards back, keeping what it answered,
    and takes no new ones; box-a runs them. When llama-server is back box-b takes shards
    again."""
    stack, box_b = fleet
    both_boxes_live(stack, box_b)
    batch = batches.submit(
        stack, items=batches.chat_items(ITEMS, prefix="d", max_tokens=16), shard_size=SHARD
    )
    assert box_b.worker is not None
    worker_pid = box_b.worker.pid
    killed = strike_while_busy(
        stack, batch["id"], box_b, SHARD, box_b.kill_llama, box_b.start_llama
    )
    done = batches.wait_terminal(stack, batch["id"], timeout=600)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    batches.assert_exactly_once(
        batches.results(stack, batch["id"]), {f"d{i}" for i in range(ITEMS)}
    )
    assert batches.errors(stack, batch["id"]) == []
    assert box_b.worker.poll() is None, "box-b's worker lived on"

    handed = [r for r in retries(stack, batch["id"]) if r.cause_type == "LlamaDown"]
    assert handed, "box-b handed its shards over (not a heartbeat timeout)"
    assert all("box box-b" in r.cause for r in handed), handed
    elsewhere = [
        r for r in handed if r.started > killed and worker_identity_pid(r.identity) != worker_pid
    ]
    assert elsewhere, f"box-b's shards ran on box-a: {handed}"
    print(
        f"\nllama-server of box-b killed: its shards running on box-a "
        f"{elsewhere[0].started - killed:.1f}s later (last {elsewhere[-1].started - killed:.1f}s), "
        f"{len(handed)} hand-over(s), per box {done['boxes']}; cause: {handed[0].cause}"
    )

    # llama-server back: the same worker takes shards again.
    box_b.start_llama()
    again = batches.submit(
        stack, items=batches.chat_items(600, prefix="e", max_tokens=16), shard_size=SHARD
    )
    finished = batches.wait_terminal(stack, again["id"], timeout=600)
    assert finished["status"] == "completed", finished
    batches.assert_exactly_once(batches.results(stack, again["id"]), {f"e{i}" for i in range(600)})
    assert finished["boxes"].get("box-b", 0) > 0, f"box-b took no shard again: {finished}"
    assert box_b.worker.pid == worker_pid and box_b.worker.poll() is None


def test_a_box_cut_off_whole_hands_its_shards_over_and_writes_nothing_over_them(
    fleet: tuple[Stack, Box],
) -> None:
    """box-b frozen (SIGSTOP of its worker and llama-server: connections open, no heartbeat,
    no answer), as behind a network partition: box-a takes its shards after the heartbeat
    timeout and the batch completes. Then box-b thaws: its stale attempts may finish and
    write, but the results of the attempts that won stay as they were."""
    stack, box_b = fleet
    both_boxes_live(stack, box_b)
    batch = batches.submit(
        stack, items=batches.chat_items(ITEMS, prefix="p", max_tokens=16), shard_size=SHARD
    )
    paused = strike_while_busy(stack, batch["id"], box_b, SHARD, box_b.pause, box_b.resume)
    try:
        done = batches.wait_terminal(stack, batch["id"], timeout=600)
        assert done["status"] == "completed", done
        shard_count = done["shard_count"]
        output = batches.results(stack, batch["id"])
        stored, keys = stored_results(stack, batch["id"], shard_count)
    finally:
        box_b.resume()
    batches.assert_exactly_once(output, {f"p{i}" for i in range(ITEMS)})
    assert done["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    moved = [r for r in retries(stack, batch["id"]) if r.started > paused]
    assert moved, "box-b's shards ran again elsewhere"

    # box-b thaws: give its stale attempts time to notice, finish or write.
    time.sleep(20)
    assert box_b.running(), "box-b came back"
    assert batches.results(stack, batch["id"]) == output
    stored_after, keys_after = stored_results(stack, batch["id"], shard_count)
    assert stored_after == stored, "a late writer replaced a shard's result"
    late = sorted(set(keys_after) - set(keys))
    latest = {key for key in keys_after if key in stored_keys(stack, batch["id"])}
    print(
        f"\nbox-b frozen: its shards running again on box-a {moved[0].started - paused:.1f}s "
        f"later (last {moved[-1].started - paused:.1f}s), {len(moved)} retried shard(s) "
        f"(causes: {sorted({r.cause for r in moved})}); after it thawed: "
        f"{len(late)} late result object(s) {late}, {len(keys_after) - len(latest)} "
        f"superseded object(s) in all, the results unchanged"
    )


# The window itself, with activities replaced under their real names, on the stack's Temporal.


class FakeFleet:
    def __init__(self, shards: int, capacity: int) -> None:
        self.shards = shards
        self.capacity = capacity
        self.in_flight = 0
        self.max_in_flight = 0
        self.runs: list[int] = []

    @activity.defn(name="split_input")
    async def split_input(self, params: SplitInput) -> SplitResult:
        return SplitResult(total=self.shards, valid=self.shards, invalid=0, shard_count=self.shards)

    @activity.defn(name="live_capacity")
    async def live_capacity(self, params: CapacityInput) -> CapacityResult:
        return CapacityResult(shards=self.capacity, boxes=3, slots=self.capacity)

    @activity.defn(name="run_shard")
    async def run_shard(self, params: ShardInput) -> ShardResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.2)
            self.runs.append(params.shard)
            return ShardResult(shard=params.shard, completed=1, failed=0, box="b")
        finally:
            self.in_flight -= 1

    @activity.defn(name="merge_results")
    async def merge_results(self, params: MergeInput) -> MergeResult:
        return MergeResult(completed=len(self.runs), failed=0, output_key="o", error_key="e")


async def run_fake_batches(address: str, capacity: int, windows: list[int]) -> list[FakeFleet]:
    client = await Client.connect(address)
    queue = f"fleet-{uuid.uuid4().hex[:8]}"
    fakes = [FakeFleet(shards=24, capacity=capacity) for _ in windows]
    handles = []
    workers = []
    for index, (fake, window) in enumerate(zip(fakes, windows, strict=True)):
        fake_queue = f"{queue}-{index}"
        handles.append(
            await client.start_workflow(
                BatchWorkflow.run,
                BatchInput(
                    batch_id=f"{fake_queue}-batch",
                    bucket="b",
                    input_key="in",
                    gpu_task_queue=fake_queue,
                    window=window,
                    follow_capacity=True,
                ),
                id=f"{fake_queue}-batch",
                task_queue=fake_queue,
            )
        )
        workers.append(
            Worker(
                client,
                task_queue=fake_queue,
                workflows=[BatchWorkflow],
                activities=[
                    fake.split_input,
                    fake.live_capacity,
                    fake.run_shard,
                    fake.merge_results,
                ],
            )
        )
    async with workers[0], workers[1]:
        await asyncio.gather(*(handle.result() for handle in handles))
    return fakes


def test_window_follows_capacity_with_the_setting_as_floor(fleet: tuple[Stack, Box]) -> None:
    stack, _ = fleet
    above, below = asyncio.run(run_fake_batches(stack.env["TEMPORAL_ADDRESS"], 6, [2, 8]))
    assert above.max_in_flight == 6, "capacity above BATCH_WINDOW sets the window"
    assert below.max_in_flight == 8, "BATCH_WINDOW is the floor"
    assert sorted(above.runs) == sorted(below.runs) == list(range(24))
