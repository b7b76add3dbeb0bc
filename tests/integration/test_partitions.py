"""Real partitions: box-b (its llama-server and GPU worker) lives in a network namespace of
its own, joined to this machine by two veth pairs, one to Temporal and one to S3
(harness/netns.py). The stack's Temporal and S3 (on 127.0.0.1) are reached at the root-side
address of their pair through a relay that only passes bytes, as a tunnel endpoint does
(harness/relay.py). box-a, the API and the CPU worker run in the root namespace.

- Both links cut mid-batch for longer than the heartbeat timeout, then healed: box-b's
  shards run on box-a within about the heartbeat timeout, the batch completes with every
  custom_id once, and box-b's late writes after the heal replace nothing.
- Only S3 cut: box-b still heartbeats, so only its own health gate moves its shards; it
  gives them up after LLAMA_DOWN_HANDOVER_SECONDS (`S3Down`) and takes work again once S3
  is back.
- Only Temporal cut: the heartbeat timeout moves them.
- A slow, lossy link (tc netem 200 ms + 5% loss, then 2 s delay), and a narrow one (tc tbf,
  1 Mbit/s): the batch completes exactly once; throughput against the clean link is printed
  and written to network-faults.json beside the stack's data.

Skipped unless run as root with `ip netns` working; the netem cases also need a kernel with
netem.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import batches, netns
from harness.fleet import Box
from harness.netns import Namespace
from harness.relay import TcpRelay
from harness.stack import Stack, free_port, start_stack
from tests.integration.test_fleet import (
    live_boxes,
    retries,
    stored_results,
    strike_while_busy,
    wait_for,
    worker_identity_pid,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netns.unavailable() is not None, reason=f"{netns.unavailable()}"),
]

SHARD = 25
ITEMS = 300
HEARTBEAT_SECONDS = 15.0  # SHARD_HEARTBEAT
HANDOVER_SECONDS = 10.0  # LLAMA_DOWN_HANDOVER_SECONDS
CUT_SECONDS = 20.0  # longer than the heartbeat timeout
# How late after the fault the first shard may start elsewhere: the timeout that moves it
# plus the retry delay and a margin for a machine shared by many tests.
MARGIN_SECONDS = 10.0
FIGURES: dict[str, dict[str, float]] = {}


@dataclass
class Partitioned:
    stack: Stack
    box_b: Box
    ns: Namespace


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Partitioned]:
    base = Path(tmp_path_factory.mktemp("partitions"))
    relays: list[TcpRelay] = []
    stack: Stack | None = None
    box_b: Box | None = None
    with Namespace.create(["temporal", "s3"]) as ns:
        try:
            stack = start_stack(
                base,
                BOX_NAME="box-a",
                LLAMA_PARALLEL="4",
                LLAMA_CTX_PER_SLOT="512",
                BATCH_WINDOW="1",
                WORKER_IDLE_EXIT_SECONDS="600",
            )
            # The stack's Temporal and S3 at the root-side address of box-b's links.
            for service, setting in (("temporal", "TEMPORAL_ADDRESS"), ("s3", "MINIO_ENDPOINT")):
                relay = TcpRelay(
                    (ns.links[service].root_address, free_port()), split(stack.env[setting])
                )
                relays.append(relay.start())
            box_b = Box(
                stack,
                "box-b",
                2,
                base,
                netns=ns,
                TEMPORAL_ADDRESS=relays[0].address,
                MINIO_ENDPOINT=relays[1].address,
            )
            box_b.start()
            yield Partitioned(stack, box_b, ns)
        finally:
            ns.heal_all()
            if box_b is not None:
                box_b.stop()
            for relay in relays:
                relay.stop()
            if stack is not None:
                if FIGURES:
                    path = stack.data_dir.parent / "network-faults.json"
                    path.write_text(json.dumps(FIGURES, indent=1))
                stack.stop()


def both_boxes_live(p: Partitioned) -> None:
    p.ns.heal_all()
    p.box_b.ensure_running()
    if "box-a" not in live_boxes(p.stack):
        tiny = batches.submit(p.stack, items=batches.chat_items(2, prefix="wake"), shard_size=1)
        batches.wait_terminal(p.stack, tiny["id"], timeout=120)
    wait_for(lambda: len(live_boxes(p.stack)) == 2, 90, "two live boxes")


def run_batch(p: Partitioned, prefix: str, count: int = ITEMS) -> tuple[dict, float]:
    started = time.monotonic()
    batch = batches.submit(
        p.stack, items=batches.chat_items(count, prefix=prefix, max_tokens=16), shard_size=SHARD
    )
    done = batches.wait_terminal(p.stack, batch["id"], timeout=600)
    return done, time.monotonic() - started


def check_exactly_once(p: Partitioned, done: dict, prefix: str, count: int = ITEMS) -> None:
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": count, "completed": count, "failed": 0}
    batches.assert_exactly_once(
        batches.results(p.stack, done["id"]), {f"{prefix}{i}" for i in range(count)}
    )
    assert batches.errors(p.stack, done["id"]) == []


def test_a_clean_link_first(partitioned: Partitioned) -> None:
    """The figure the faults are compared with: both boxes, nothing wrong."""
    both_boxes_live(partitioned)
    done, seconds = run_batch(partitioned, "c")
    check_exactly_once(partitioned, done, "c")
    assert done["boxes"].get("box-b", 0) > 0, f"box-b answered through its links: {done}"
    FIGURES["clean"] = {"seconds": round(seconds, 1), "per_s": round(ITEMS / seconds, 1)}
    print(f"\nclean link: {ITEMS} requests in {seconds:.1f}s, per box {done['boxes']}")


def cut_mid_batch(p: Partitioned, prefix: str, links: list[str]) -> tuple[dict, float, float]:
    """Cuts `links` once box-b runs a shard of a new batch, heals them after CUT_SECONDS
    (or when the batch ended, whichever is later is not waited for): (the finished batch,
    when the cut began (Unix time), the batch's seconds)."""
    both_boxes_live(p)
    started = time.monotonic()
    batch = batches.submit(
        p.stack, items=batches.chat_items(ITEMS, prefix=prefix, max_tokens=16), shard_size=SHARD
    )

    def cut() -> None:
        for name in links:
            p.ns.links[name].cut()

    def heal() -> None:
        for name in links:
            p.ns.links[name].heal()

    cut_at = strike_while_busy(p.stack, batch["id"], p.box_b, SHARD, cut, heal)
    try:
        batches.wait_until(
            p.stack,
            batch["id"],
            lambda b: b["status"] in batches.TERMINAL or time.time() - cut_at >= CUT_SECONDS,
            timeout=CUT_SECONDS + 600,
        )
    finally:
        heal()
    done = batches.wait_terminal(p.stack, batch["id"], timeout=600)
    return done, cut_at, time.monotonic() - started


def moved_elsewhere(p: Partitioned, batch_id: str, since: float) -> list:
    assert p.box_b.worker is not None
    pid = p.box_b.worker.pid
    return [
        r
        for r in retries(p.stack, batch_id)
        if r.started > since and worker_identity_pid(r.identity) != pid
    ]


def test_a_box_cut_off_whole_hands_its_shards_over_and_its_late_writes_replace_nothing(
    partitioned: Partitioned,
) -> None:
    p = partitioned
    done, cut_at, seconds = cut_mid_batch(p, "w", ["temporal", "s3"])
    check_exactly_once(p, done, "w")
    moved = moved_elsewhere(p, done["id"], cut_at)
    assert moved, "box-b's shards ran again on box-a"
    handed_over = moved[0].started - cut_at
    output = batches.results(p.stack, done["id"])
    stored, keys = stored_results(p.stack, done["id"], done["shard_count"])
    # Healed: box-b is back, and whatever its stale attempts still write lands at their own
    # keys, beside the results that won.
    wait_for(lambda: "box-b" in live_boxes(p.stack), 90, "box-b back after the heal")
    time.sleep(5)
    assert batches.results(p.stack, done["id"]) == output
    stored_after, keys_after = stored_results(p.stack, done["id"], done["shard_count"])
    assert stored_after == stored, "a late writer replaced a shard's result"
    late = sorted(set(keys_after) - set(keys))
    FIGURES["partition"] = {"seconds": round(seconds, 1), "moved_after": round(handed_over, 1)}
    print(
        f"\nwhole link cut {CUT_SECONDS:g}s: box-b's shards running on box-a "
        f"{handed_over:.1f}s after the cut ({len(moved)} retried, causes "
        f"{sorted({r.cause_type or r.cause[:40] for r in moved})}); batch {seconds:.1f}s, "
        f"per box {done['boxes']}; {len(late)} late result object(s) after the heal"
    )
    assert handed_over <= HEARTBEAT_SECONDS + MARGIN_SECONDS


def test_a_box_cut_off_from_s3_alone_gives_its_shards_up(partitioned: Partitioned) -> None:
    p = partitioned
    since = p.box_b.worker_log_size()
    done, cut_at, seconds = cut_mid_batch(p, "s", ["s3"])
    check_exactly_once(p, done, "s")
    every = retries(p.stack, done["id"])
    handed = [r for r in every if r.cause_type == "S3Down"]
    assert handed, f"box-b gave its shards up itself, for S3; retries: {every}"
    assert all("box box-b" in r.cause and "S3 has not answered" in r.cause for r in handed)
    moved = moved_elsewhere(p, done["id"], cut_at)
    assert moved, "box-b's shards ran again on box-a"
    handed_over = moved[0].started - cut_at
    FIGURES["s3-only"] = {"seconds": round(seconds, 1), "moved_after": round(handed_over, 1)}
    print(
        f"\nS3 link cut {CUT_SECONDS:g}s: box-b's shards running on box-a {handed_over:.1f}s "
        f"after the cut ({len(handed)} hand-over(s): {handed[0].cause}); batch {seconds:.1f}s, "
        f"per box {done['boxes']}"
    )
    assert handed_over <= HANDOVER_SECONDS + MARGIN_SECONDS
    # S3 back: box-b works again.
    wait_for(lambda: "box-b" in live_boxes(p.stack), 90, "box-b back after the heal")
    p.box_b.wait_worker_log("S3 is back: this box takes shards again", since, timeout=90)
    again, _ = run_batch(p, "sa", 150)
    check_exactly_once(p, again, "sa", 150)
    assert again["boxes"].get("box-b", 0) > 0, f"box-b took no shard again: {again}"


def test_a_box_cut_off_from_temporal_alone_loses_its_shards_by_heartbeat(
    partitioned: Partitioned,
) -> None:
    p = partitioned
    done, cut_at, seconds = cut_mid_batch(p, "t", ["temporal"])
    check_exactly_once(p, done, "t")
    moved = moved_elsewhere(p, done["id"], cut_at)
    assert moved, "box-b's shards ran again on box-a"
    handed_over = moved[0].started - cut_at
    output = batches.results(p.stack, done["id"])
    stored, _ = stored_results(p.stack, done["id"], done["shard_count"])
    wait_for(lambda: "box-b" in live_boxes(p.stack), 90, "box-b back after the heal")
    time.sleep(5)
    assert batches.results(p.stack, done["id"]) == output
    assert stored_results(p.stack, done["id"], done["shard_count"])[0] == stored
    FIGURES["temporal-only"] = {
        "seconds": round(seconds, 1),
        "moved_after": round(handed_over, 1),
    }
    print(
        f"\nTemporal link cut {CUT_SECONDS:g}s: box-b's shards running on box-a "
        f"{handed_over:.1f}s after the cut ({len(moved)} retried); batch {seconds:.1f}s, "
        f"per box {done['boxes']}"
    )
    assert handed_over <= HEARTBEAT_SECONDS + MARGIN_SECONDS


@pytest.mark.skipif(netns.netem_unavailable() is not None, reason=f"{netns.netem_unavailable()}")
@pytest.mark.parametrize(("name", "delay_ms", "loss"), [("200ms-5%", 200, 5.0), ("2s", 2000, 0.0)])
def test_a_slow_lossy_link_only_slows_the_batch(
    partitioned: Partitioned, name: str, delay_ms: int, loss: float
) -> None:
    p = partitioned
    both_boxes_live(p)
    for link in p.ns.links.values():
        link.slow(delay_ms, loss)
    try:
        done, seconds = run_batch(p, f"n{delay_ms}-")
    finally:
        for link in p.ns.links.values():
            link.clear()
    check_exactly_once(p, done, f"n{delay_ms}-")
    FIGURES[f"netem {name}"] = {"seconds": round(seconds, 1), "per_s": round(ITEMS / seconds, 1)}
    clean = FIGURES.get("clean", {}).get("seconds")
    print(
        f"\nnetem {name} on both links: {ITEMS} requests in {seconds:.1f}s "
        f"(clean link: {clean}s), per box {done['boxes']}"
    )


def test_a_narrow_link_only_slows_the_batch(partitioned: Partitioned) -> None:
    """tc tbf at 1 Mbit/s each way on both links (every kernel has it, netem or not)."""
    p = partitioned
    both_boxes_live(p)
    for link in p.ns.links.values():
        link.narrow(1000)
    try:
        done, seconds = run_batch(p, "r")
    finally:
        for link in p.ns.links.values():
            link.clear()
    check_exactly_once(p, done, "r")
    FIGURES["tbf 1mbit"] = {"seconds": round(seconds, 1), "per_s": round(ITEMS / seconds, 1)}
    clean = FIGURES.get("clean", {}).get("seconds")
    print(
        f"\ntbf 1 Mbit/s on both links: {ITEMS} requests in {seconds:.1f}s "
        f"(clean link: {clean}s), per box {done['boxes']}"
    )
