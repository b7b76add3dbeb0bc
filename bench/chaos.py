"""Chaos soak: several batches over N minutes while a random fault fires every 30-90 s.

    python bench/chaos.py --minutes N [--seed S] [--lines L] [--dir D]

Starts the stack (harness.stack, free ports) and a second GPU box (harness.fleet.Box), in a
network namespace of its own when `harness.netns` can make one, so that its partitions are
real. Batches (about 20,000 lines for 30 minutes, scaled with N) are submitted over the
first three quarters of the run, at most three running at once; meanwhile a fault drawn
with the seed from FAULTS fires, lasts a bounded time and is undone, then the next fires
30-90 s after the last one began.

Checked at the end (exit 0 when all hold, else 1 with one line per broken invariant):
every batch completed with every custom_id exactly once and no error line; no batch went
without progress longer than the longest fault plus the heartbeat timeout; no program's RSS
or open file count grew without bound (start against end of the run); no traceback in the
logs outside the window of a fault that explains it. The fault log, the summary tables and
every sample are printed and written to chaos.json in the run's folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from harness import netns  # noqa: E402
from harness.batches import chat_items  # noqa: E402
from harness.fleet import Box  # noqa: E402
from harness.netns import Namespace  # noqa: E402
from harness.relay import TcpRelay  # noqa: E402
from harness.stack import REPO_ROOT, Stack, free_port, start_stack  # noqa: E402
from kernel.lifecycle import FINAL_STATES  # noqa: E402
from workers.workflows.batch import SHARD_HEARTBEAT, SHARD_RETRY  # noqa: E402

HEARTBEAT_SECONDS = SHARD_HEARTBEAT.total_seconds()
# A shard attempt failed by a fault is retried after at most this (its backoff's cap).
RETRY_CAP_SECONDS = (SHARD_RETRY.maximum_interval or SHARD_HEARTBEAT).total_seconds()
LINES_PER_30_MINUTES = 20_000
MAX_BATCH_LINES = 2_000
MAX_RUNNING = 3  # batches in flight at once
SAMPLE_SECONDS = 2.0  # batch progress
PROCESS_EVERY = 5  # process samples every this many progress samples
FAULT_EVERY = (30.0, 90.0)  # seconds from one fault's start to the next one's
TRACEBACK_GRACE_SECONDS = 60.0  # a fault explains tracebacks until this long after its end
# "Without bound": the end of the run against its start.
RSS_BOUND = (3.0, 256 * 1024)  # end <= 3 x start + 256 MiB (kB)
FDS_BOUND = (2.0, 64)  # end <= 2 x start + 64
STACK_PROGRAMS = ("worker-gpu", "worker-cpu", "fastapi", "llama", "minio", "temporal")
TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})")


@dataclass
class FaultRecord:
    """One fault that fired: seconds are from the start of the run."""

    at: float
    fault: str
    target: str
    duration: float = 0.0
    ended: float = 0.0
    recovery: float | None = None  # until a batch progressed again after the undo
    note: str = ""


@dataclass
class BatchRecord:
    id: str
    lines: int
    prefix: str
    submitted: float
    progress: list[tuple[float, int, str]] = field(default_factory=list)  # (t, done, status)
    ended: float | None = None
    status: str = ""


@dataclass
class Fault:
    """A kind of fault: what it hits, how long it lasts (drawn in `hold`), and why it
    cannot fire here (None: it can)."""

    name: str
    targets: Callable[[Chaos], list[str]]
    run: Callable[[Chaos, str, float], str]  # injects, holds, undoes; returns a note
    hold: tuple[float, float]
    unavailable: Callable[[Chaos], str | None] = lambda chaos: None


class Chaos:
    def __init__(self, base: Path, seed: int, minutes: float, lines: int) -> None:
        self.base = base
        self.rng = random.Random(seed)
        self.seed = seed
        self.minutes = minutes
        self.lines = lines
        self.stack: Stack | None = None
        self.box: Box | None = None
        self.ns: Namespace | None = None
        self.relays: list[TcpRelay] = []
        self.proxy: subprocess.Popen[bytes] | None = None
        self.sick_file = base / "box-b-sick"
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.lock = threading.Lock()
        self.batches: list[BatchRecord] = []
        self.faults: list[FaultRecord] = []
        self.processes: dict[str, list[tuple[float, int, int, int]]] = {}  # (t, pid, kB, fds)
        self.stop_sampling = threading.Event()
        self.submitting_done = threading.Event()
        self.restarting = threading.Event()
        self.unsubmitted = 0  # lines of the batches the run had no time to submit

    # ---- set-up and teardown -------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        reason = netns.unavailable()
        if reason is None:
            self.ns = Namespace.create(["temporal", "s3"])
        else:
            print(f"box-b in this machine's own namespace (no partitions): {reason}")
        self.stack = start_stack(
            self.base,
            BOX_NAME="box-a",
            LLAMA_PARALLEL="4",
            LLAMA_CTX_PER_SLOT="512",
            BATCH_WINDOW="1",
            WORKER_IDLE_EXIT_SECONDS="120",
            MAX_REQUEST_BYTES="4000000",
        )
        extra: dict[str, str] = {}
        if self.ns is not None:
            for service, setting in (("temporal", "TEMPORAL_ADDRESS"), ("s3", "MINIO_ENDPOINT")):
                host, _, port = self.stack.env[setting].rpartition(":")
                relay = TcpRelay(
                    (self.ns.links[service].root_address, free_port()), (host, int(port))
                )
                self.relays.append(relay.start())
            extra = {
                "TEMPORAL_ADDRESS": self.relays[0].address,
                "MINIO_ENDPOINT": self.relays[1].address,
            }
        self.box = Box(self.stack, "box-b", 2, self.base, netns=self.ns, **extra)
        proxy_port = free_port()
        self.box.extra["LLAMA_URL"] = f"http://127.0.0.1:{proxy_port}"
        args = [
            sys.executable,
            "-m",
            "harness.sick_llama",
            "--port",
            str(proxy_port),
            "--target-port",
            str(self.box.port),
            "--sick-file",
            str(self.sick_file),
        ]
        env = self.stack.process_env()
        if self.ns is not None:
            self.proxy = self.ns.popen(args, self.base / "box-b-proxy.log", env, cwd=REPO_ROOT)
        else:
            with open(self.base / "box-b-proxy.log", "ab") as out:
                self.proxy = subprocess.Popen(
                    args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                )
        self.box.start()

    def close(self) -> None:
        self.sick_file.unlink(missing_ok=True)
        if self.ns is not None:
            self.ns.heal_all()
        if self.box is not None:
            self.box.stop()
        if self.proxy is not None:
            netns.stop_process(self.proxy)
        for relay in self.relays:
            relay.stop()
        if self.stack is not None:
            self.stack.stop()
        if self.ns is not None:
            self.ns.close()

    # ---- sampling ----------------------------------------------------------------------

    def http(self) -> httpx.Client:
        assert self.stack is not None
        return httpx.Client(base_url=self.stack.api_url, timeout=5)

    def sample_loop(self) -> None:
        tick = 0
        with self.http() as client:
            while not self.stop_sampling.is_set():
                self.sample_batches(client)
                if tick % PROCESS_EVERY == 0:
                    self.sample_processes()
                tick += 1
                self.stop_sampling.wait(SAMPLE_SECONDS)

    def sample_batches(self, client: httpx.Client) -> None:
        with self.lock:
            running = [b for b in self.batches if b.ended is None]
        for batch in running:
            try:
                answer = client.get(f"/batch/{batch.id}")
            except httpx.HTTPError:
                continue
            if answer.status_code != 200:
                continue
            body = answer.json()
            counts = body["request_counts"]
            state = (counts["completed"] + counts["failed"], body["status"])
            with self.lock:
                if not batch.progress or batch.progress[-1][1:] != state:
                    batch.progress.append((round(self.now(), 2), *state))
                if body["status"] in FINAL_STATES:
                    batch.ended, batch.status = self.now(), body["status"]

    def pids(self) -> dict[str, int]:
        assert self.stack is not None and self.box is not None
        found: dict[str, int] = {}
        if not self.restarting.is_set():
            try:
                programs = self.stack.supervisor().programs_sync()
                found |= {name: info.pid for name, info in programs.items() if info.pid}
            except Exception:  # supervisord away (a whole-stack restart)
                pass
            pidfile = self.stack.data_dir / "supervisord.pid"
            if pidfile.exists():
                text = pidfile.read_text().strip()
                if text.isdigit():
                    found["supervisord"] = int(text)
        for name, process in (
            ("box-b worker", self.box.worker),
            ("box-b llama", self.box.llama),
            ("box-b proxy", self.proxy),
        ):
            if process is not None and process.poll() is None:
                found[name] = process.pid
        return found

    def sample_processes(self) -> None:
        t = round(self.now(), 2)
        for name, pid in self.pids().items():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = next(
                    int(line.split()[1])
                    for line in status.splitlines()
                    if line.startswith("VmRSS:")
                )
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, StopIteration, ValueError):
                continue
            with self.lock:
                self.processes.setdefault(name, []).append((t, pid, rss, fds))

    # ---- batches -----------------------------------------------------------------------

    def plan(self) -> list[tuple[float, int]]:
        """(when, lines) of each batch: spread over the first three quarters of the run."""
        count = max(3, -(-self.lines // MAX_BATCH_LINES))
        span = self.minutes * 60 * 0.75
        sizes = [self.lines // count + (1 if i < self.lines % count else 0) for i in range(count)]
        return [(span * i / count, size) for i, size in enumerate(sizes)]

    def submit_loop(self) -> None:
        with self.http() as client:
            for index, (when, size) in enumerate(self.plan()):
                # At its time, and while fewer than MAX_RUNNING batches run: on a machine too
                # slow for the planned lines, batches queue here, not in the stack (where
                # each would wait behind the others' shards); those still waiting when the
                # faults stop are never submitted (the report counts them).
                while not self.stop_sampling.is_set() and (
                    self.now() < when or self.running() >= MAX_RUNNING
                ):
                    if self.now() >= self.minutes * 60:
                        with self.lock:
                            self.unsubmitted = sum(n for _, n in self.plan()[index:])
                        self.submitting_done.set()
                        return
                    time.sleep(0.5)
                prefix = f"c{index}-"
                body = {
                    "items": chat_items(size, prefix=prefix, max_tokens=8),
                    "shard_size": 50,
                    "metadata": {"chaos": str(self.seed)},
                }
                key = f"chaos-{self.seed}-{uuid.uuid4().hex[:8]}-{index}"
                submitted = self.now()
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:  # the API may be away (a fault)
                    try:
                        answer = client.post(
                            "/batch", json=body, headers={"Idempotency-Key": key}, timeout=60
                        )
                        if answer.status_code in (200, 202):
                            with self.lock:
                                self.batches.append(
                                    BatchRecord(answer.json()["id"], size, prefix, submitted)
                                )
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(2)
                else:
                    print(f"batch {index} could not be submitted for 600 s")
        self.submitting_done.set()

    def progressed_since(self, t: float) -> float | None:
        """When a batch first progressed after `t` (None: not yet)."""
        with self.lock:
            times = [p[0] for b in self.batches for p in b.progress if p[0] > t]
        return min(times) if times else None

    # ---- faults ------------------------------------------------------------------------

    def fire(self, fault: Fault) -> FaultRecord:
        target = self.rng.choice(fault.targets(self))
        hold = round(self.rng.uniform(*fault.hold), 1)
        record = FaultRecord(at=round(self.now(), 2), fault=fault.name, target=target)
        print(f"[{record.at:7.1f}s] {fault.name} {target} (hold {hold:g}s)", flush=True)
        try:
            record.note = fault.run(self, target, hold)
        except Exception as exc:  # a fault that could not be made or undone is a finding
            record.note = f"fault failed: {exc!r}"
        record.ended = round(self.now(), 2)
        record.duration = round(record.ended - record.at, 2)
        with self.lock:
            self.faults.append(record)
        return record

    def fault_loop(self) -> None:
        available = [f for f in FAULTS if f.unavailable(self) is None]
        end = self.minutes * 60
        next_at = self.rng.uniform(*FAULT_EVERY)
        while True:
            if next_at >= end:
                break
            while self.now() < next_at:
                time.sleep(0.5)
            record = self.fire(self.rng.choice(available))
            # The next fault fires 30-90 s after this one began, and not before the batches
            # progressed again (or a minute passed): each recovery is seen on its own.
            next_at = record.at + self.rng.uniform(*FAULT_EVERY)
            quiet = time.monotonic() + 60
            while self.progressed_since(record.ended) is None and time.monotonic() < quiet:
                if self.submitting_done.is_set() and self.all_ended():
                    break
                time.sleep(0.5)
            next_at = max(next_at, self.now() + 5)

    def running(self) -> int:
        with self.lock:
            return sum(1 for b in self.batches if b.ended is None)

    def running_at(self, t: float) -> bool:
        """Whether a batch was submitted and not yet ended at `t`."""
        with self.lock:
            return any(b.submitted <= t and (b.ended is None or b.ended > t) for b in self.batches)

    def all_ended(self) -> bool:
        with self.lock:
            return all(b.ended is not None for b in self.batches)

    # ---- the run -----------------------------------------------------------------------

    def run(self, drain_minutes: float) -> dict[str, Any]:
        self.t0, self.t0_wall = time.monotonic(), time.time()
        sampler = threading.Thread(target=self.sample_loop, daemon=True)
        submitter = threading.Thread(target=self.submit_loop, daemon=True)
        sampler.start()
        submitter.start()
        self.fault_loop()
        faults_over = self.now()
        deadline = time.monotonic() + drain_minutes * 60
        while time.monotonic() < deadline:
            if self.submitting_done.is_set() and self.all_ended():
                break
            time.sleep(1)
        drained = self.now()
        time.sleep(SAMPLE_SECONDS)
        self.sample_processes()
        self.stop_sampling.set()
        sampler.join(timeout=60)
        for record in self.faults:
            progressed = self.progressed_since(record.ended)
            if not self.running_at(record.ended):
                record.note += "; no batch was running"
            elif progressed is not None:
                record.recovery = round(progressed - record.ended, 2)
        return {"faults_over_s": round(faults_over, 1), "drained_s": round(drained, 1)}


# ---- the faults ----------------------------------------------------------------------------


def _running_programs(chaos: Chaos) -> list[str]:
    assert chaos.stack is not None
    programs = chaos.stack.supervisor().programs_sync()
    running = [p for p in STACK_PROGRAMS if p in programs and programs[p].pid]
    return running or ["fastapi"]


def _kill(chaos: Chaos, program: str, hold: float) -> str:
    """SIGKILL; supervisord restarts it (an unexpected exit). Undone once it runs again with
    a new pid (started by hand when it has not after 60 s)."""
    assert chaos.stack is not None
    control = chaos.stack.supervisor()
    pid = control.programs_sync()[program].pid
    if not pid:
        return "not running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = control.programs_sync()[program]
        if info.pid and info.pid != pid and info.state == "RUNNING":
            return f"pid {pid} killed; running again as {info.pid}"
        if program.startswith("worker") and info.state in ("EXITED", "STOPPED"):
            return f"pid {pid} killed; left stopped (started again on demand)"
        time.sleep(0.5)
    control.start_sync(program)
    return f"pid {pid} killed; started by hand after 60 s"


def _stop(chaos: Chaos, program: str, hold: float) -> str:
    """SIGSTOP for `hold` seconds, then SIGCONT (a frozen process: connections open, silent)."""
    assert chaos.stack is not None
    pid = chaos.stack.supervisor().programs_sync()[program].pid
    if not pid:
        return "not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(hold)
    finally:
        os.kill(pid, signal.SIGCONT)
    return f"pid {pid} frozen {hold:g}s"


def _partition(chaos: Chaos, target: str, hold: float) -> str:
    """box-b's links to Temporal and S3 cut (its end of each veth pair down), then healed."""
    assert chaos.ns is not None
    links = list(chaos.ns.links) if target == "box-b" else [target.removeprefix("box-b/")]
    for name in links:
        chaos.ns.links[name].cut()
    try:
        time.sleep(hold)
    finally:
        for name in links:
            chaos.ns.links[name].heal()
    return f"cut {'+'.join(links)} {hold:g}s"


def _slow(chaos: Chaos, target: str, hold: float) -> str:
    """tc netem 200 ms + 5% loss where the kernel has netem, else tc tbf 1 Mbit/s, on both of
    box-b's links; cleared after `hold`."""
    assert chaos.ns is not None
    netem = netns.netem_unavailable() is None
    for link in chaos.ns.links.values():
        if netem:
            link.slow(200, 5)
        else:
            link.narrow(1000)
    try:
        time.sleep(hold)
    finally:
        for link in chaos.ns.links.values():
            link.clear()
    return ("netem 200ms 5% loss" if netem else "tbf 1mbit") + f" {hold:g}s"


def _sick(chaos: Chaos, target: str, hold: float) -> str:
    """box-b's llama-server answers /health but 500 to every request (its proxy), then
    heals."""
    chaos.sick_file.touch()
    try:
        time.sleep(hold)
    finally:
        chaos.sick_file.unlink(missing_ok=True)
    return f"500 to every request {hold:g}s"


def _restart(chaos: Chaos, target: str, hold: float) -> str:
    """supervisord and every program stopped (by pid), then started again."""
    assert chaos.stack is not None
    chaos.restarting.set()
    try:
        chaos.stack.stop()
        time.sleep(hold)
        chaos.stack.start()
    finally:
        chaos.restarting.clear()
    return f"down {hold:g}s, healthy again after {chaos.stack.started_seconds:.1f}s"


def _no_namespace(chaos: Chaos) -> str | None:
    return None if chaos.ns is not None else "box-b has no network namespace here"


def _disk_full_unavailable(chaos: Chaos) -> str | None:
    # Hook: a full disk (the S3 data folder, then Temporal's, on a small filesystem filled
    # mid-batch, freed after the hold) comes with the full-disk work of issue 20 item 3.
    # Give it a `run` that fills and frees, and return None here once it exists.
    return "not built yet (issue 20 item 3: full disks)"


FAULTS: list[Fault] = [
    Fault("kill", _running_programs, _kill, (0.0, 0.0)),
    Fault("stop", _running_programs, _stop, (5.0, 20.0)),
    Fault("partition", lambda chaos: ["box-b"], _partition, (20.0, 40.0), _no_namespace),
    Fault("slow-link", lambda chaos: ["box-b"], _slow, (30.0, 60.0), _no_namespace),
    Fault("sick-llama", lambda chaos: ["box-b"], _sick, (15.0, 30.0)),
    Fault("restart", lambda chaos: ["stack"], _restart, (3.0, 10.0)),
    Fault(
        "disk-full",
        lambda chaos: ["s3", "temporal"],
        lambda chaos, target, hold: "",
        (20.0, 40.0),
        _disk_full_unavailable,
    ),
]


# ---- the invariants --------------------------------------------------------------------------


def check_batches(chaos: Chaos, client: httpx.Client) -> tuple[list[str], list[dict[str, Any]]]:
    broken: list[str] = []
    rows: list[dict[str, Any]] = []
    for batch in chaos.batches:
        row: dict[str, Any] = {"id": batch.id, "lines": batch.lines, "status": batch.status}
        rows.append(row)
        if batch.status != "completed":
            if batch.status:
                broken.append(f"batch {batch.id} ended {batch.status}")
            else:
                done, at = (
                    (batch.progress[-1][1], batch.progress[-1][0]) if batch.progress else (0, 0)
                )
                broken.append(
                    f"batch {batch.id} still running when the drain ended: {done} of "
                    f"{batch.lines} lines done, last progress at {at:.0f}s of the run"
                )
            continue
        row["seconds"] = round((batch.ended or 0) - batch.submitted, 1)
        output = client.get(f"/batch/{batch.id}/results", timeout=120)
        errors = client.get(f"/batch/{batch.id}/errors", timeout=120)
        lines = [json.loads(x) for x in output.text.splitlines() if x.strip()]
        error_lines = [json.loads(x) for x in errors.text.splitlines() if x.strip()]
        ids = [line["custom_id"] for line in lines + error_lines]
        expected = {f"{batch.prefix}{i}" for i in range(batch.lines)}
        duplicated = len(ids) - len(set(ids))
        missing = len(expected - set(ids))
        row |= {"results": len(lines), "errors": len(error_lines)}
        if duplicated or missing or set(ids) - expected:
            broken.append(
                f"batch {batch.id}: {missing} custom_id(s) missing, {duplicated} duplicated, "
                f"{len(set(ids) - expected)} unknown"
            )
        if error_lines:
            codes = sorted({str((e.get("error") or {}).get("code")) for e in error_lines})
            broken.append(f"batch {batch.id}: {len(error_lines)} error line(s), codes {codes}")
    return broken, rows


def longest_stall(batch: BatchRecord) -> float:
    times = [batch.submitted, *(p[0] for p in batch.progress)]
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def check_progress(
    chaos: Chaos, rows: list[dict[str, Any]], slack: float = 0.0
) -> tuple[list[str], float]:
    """The longest stretch each batch went without progress (a shard finished, or a change
    of status), against the longest fault plus the heartbeat timeout, plus the shard
    retry's backoff cap (a shard failed again and again by faults waits that long for its
    next attempt) and the sampling period, plus `slack` (a machine shared with other work
    starts programs tens of seconds slower)."""
    longest = max((f.duration for f in chaos.faults), default=0.0)
    bound = longest + HEARTBEAT_SECONDS + RETRY_CAP_SECONDS + 2 * SAMPLE_SECONDS + slack
    broken = []
    for batch, row in zip(chaos.batches, rows, strict=True):
        stall = longest_stall(batch)
        row["longest_stall_s"] = round(stall, 1)
        if stall > bound:
            broken.append(
                f"batch {batch.id} made no progress for {stall:.0f}s (bound {bound:.0f}s: "
                f"longest fault {longest:.0f}s + heartbeat {HEARTBEAT_SECONDS:g}s + retry cap "
                f"{RETRY_CAP_SECONDS:g}s + sampling)"
            )
    return broken, bound


def check_processes(chaos: Chaos) -> tuple[list[str], list[dict[str, Any]]]:
    broken, rows = [], []
    run_end = max((s[0] for samples in chaos.processes.values() for s in samples), default=0.0)
    for name, samples in sorted(chaos.processes.items()):
        head = [s for s in samples if s[0] <= samples[0][0] + max(60.0, run_end * 0.1)]
        tail = [s for s in samples if s[0] >= run_end - max(30.0, run_end * 0.05)]
        if not tail:  # not running at the end (an idle worker that exited): its last samples
            last = samples[-1][1]
            tail = [s for s in samples if s[1] == last][-max(1, len(head)) :]
        rss0 = statistics.median(s[2] for s in head)
        rss1 = statistics.median(s[2] for s in tail)
        fds0 = statistics.median(s[3] for s in head)
        fds1 = statistics.median(s[3] for s in tail)
        row = {
            "program": name,
            "pids": len({s[1] for s in samples}),
            "rss_start_mib": round(rss0 / 1024, 1),
            "rss_end_mib": round(rss1 / 1024, 1),
            "rss_max_mib": round(max(s[2] for s in samples) / 1024, 1),
            "fds_start": fds0,
            "fds_end": fds1,
            "fds_max": max(s[3] for s in samples),
            "end_at_s": tail[-1][0],
        }
        rows.append(row)
        if rss1 > RSS_BOUND[0] * rss0 + RSS_BOUND[1]:
            broken.append(
                f"{name}: RSS {rss0 / 1024:.0f} MiB at the start, {rss1 / 1024:.0f} at the end"
            )
        if fds1 > FDS_BOUND[0] * fds0 + FDS_BOUND[1]:
            broken.append(f"{name}: {fds0:g} open files at the start, {fds1:g} at the end")
    return broken, rows


def log_files(chaos: Chaos) -> list[Path]:
    assert chaos.stack is not None
    files = sorted(chaos.stack.log_dir.glob("*.log*"))
    return files + sorted(chaos.base.glob("box-b-*.log"))


def tracebacks(path: Path, t0_wall: float) -> list[dict[str, Any]]:
    """Each traceback in the file: when (seconds into the run, from the nearest timestamped
    line before it; None when there is none) and its exception line."""
    found = []
    lines = path.read_text(errors="replace").splitlines()
    for index, line in enumerate(lines):
        if "Traceback (most recent call last)" not in line:
            continue
        when: float | None = None
        for back in range(index, max(-1, index - 60), -1):
            match = TIMESTAMP.match(lines[back])
            if match:
                stamp = datetime.strptime(match.group(1).replace("T", " "), "%Y-%m-%d %H:%M:%S")
                when = round(stamp.timestamp() - t0_wall, 1)
                break
        exception = next(
            (x for x in lines[index + 1 : index + 400] if x and not x[0].isspace()), ""
        )
        found.append({"log": path.name, "line": index + 1, "t": when, "exception": exception})
    return found


def check_logs(chaos: Chaos) -> tuple[list[str], list[dict[str, Any]]]:
    found = [tb for path in log_files(chaos) for tb in tracebacks(path, chaos.t0_wall)]
    for tb in found:
        t = tb["t"]
        # The latest fault whose window holds it (the one that began last before it).
        windows = [
            f
            for f in chaos.faults
            if t is not None and f.at - 2 <= t <= f.ended + TRACEBACK_GRACE_SECONDS
        ]
        cause = max(windows, key=lambda f: f.at, default=None)
        tb["fault"] = f"{cause.fault} {cause.target} at {cause.at:.0f}s" if cause else None
    unexplained = [tb for tb in found if tb["fault"] is None]
    broken = [
        f"traceback outside any fault's window: {tb['log']}:{tb['line']} (t={tb['t']}s) "
        f"{tb['exception'][:160]}"
        for tb in unexplained
    ]
    return broken, found


# ---- report -----------------------------------------------------------------------------------


def fault_summary(chaos: Chaos) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(f.fault for f in chaos.faults):
        fired = [f for f in chaos.faults if f.fault == name]
        recovered = [f.recovery for f in fired if f.recovery is not None]
        rows.append(
            {
                "fault": name,
                "fired": len(fired),
                "targets": sorted({f.target for f in fired}),
                "duration_max_s": max(f.duration for f in fired),
                "recovery_median_s": round(statistics.median(recovered), 1) if recovered else None,
                "recovery_max_s": max(recovered) if recovered else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def soak(
    minutes: float,
    seed: int | None = None,
    lines: int | None = None,
    base: Path | None = None,
    drain_minutes: float = 5.0,
    stall_slack: float = 0.0,
) -> int:
    """The soak; returns the exit status (0: every invariant held)."""
    seed = seed if seed is not None else random.randrange(1 << 31)
    lines = lines if lines is not None else max(300, round(LINES_PER_30_MINUTES * minutes / 30))
    base = base or Path(tempfile.mkdtemp(prefix="chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(base, seed, minutes, lines)
    print(f"chaos soak: {minutes:g} min, seed {seed}, {lines} lines, in {base}", flush=True)
    skipped = {f.name: reason for f in FAULTS if (reason := f.unavailable(chaos)) is not None}
    try:
        chaos.start()
        skipped = {f.name: reason for f in FAULTS if (reason := f.unavailable(chaos)) is not None}
        timing = chaos.run(drain_minutes)
        with chaos.http() as client:
            broken, batch_rows = check_batches(chaos, client)
        stalls, bound = check_progress(chaos, batch_rows, stall_slack)
        grown, process_rows = check_processes(chaos)
        unexplained, traces = check_logs(chaos)
    finally:
        chaos.close()
    broken += stalls + grown + unexplained
    summary = fault_summary(chaos)
    report = {
        "seed": seed,
        "minutes": minutes,
        "lines": lines,
        "lines_not_submitted": chaos.unsubmitted,
        "namespace": chaos.ns is not None,
        "faults_not_drawn": skipped,
        **timing,
        "stall_bound_s": round(bound, 1),
        "fault_log": [asdict(f) for f in chaos.faults],
        "fault_summary": summary,
        "batches": batch_rows,
        "processes": process_rows,
        "tracebacks": traces,
        "broken": broken,
        "progress": {b.id: b.progress for b in chaos.batches},
        "process_samples": chaos.processes,
    }
    (base / "chaos.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\nfault log")
    print(
        table(
            [asdict(f) for f in chaos.faults],
            ["at", "fault", "target", "duration", "recovery", "note"],
        )
    )
    print("\nfaults")
    print(
        table(
            summary,
            ["fault", "fired", "targets", "duration_max_s", "recovery_median_s", "recovery_max_s"],
        )
    )
    print(f"\nbatches (stall bound {bound:.0f}s; {chaos.unsubmitted} lines not submitted in time)")
    print(
        table(
            batch_rows, ["id", "lines", "status", "seconds", "results", "errors", "longest_stall_s"]
        )
    )
    print("\nprocesses")
    print(table(process_rows, list(process_rows[0]) if process_rows else ["program"]))
    explained = sum(1 for tb in traces if tb["fault"])
    print(f"\ntracebacks: {len(traces)} ({explained} within a fault's window)")
    for tb in traces:
        where = f"{tb['log']}:{tb['line']} t={tb['t']}s"
        print(f"  {where} [{tb['fault'] or 'UNEXPLAINED'}] {tb['exception'][:140]}")
    if skipped:
        print("\nnot drawn: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    print(f"\nreport: {base / 'chaos.json'}")
    for line in broken:
        print(f"BROKEN: {line}")
    print("all invariants held" if not broken else f"{len(broken)} invariant(s) broken")
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long faults fire")
    parser.add_argument("--seed", type=int, help="repeats a run's draws (default: random)")
    parser.add_argument("--lines", type=int, help="lines in all (default: 20,000 per 30 min)")
    parser.add_argument("--dir", type=Path, help="the run's folder (default: a new temp one)")
    parser.add_argument(
        "--drain-minutes", type=float, default=5.0, help="how long batches may run on after"
    )
    parser.add_argument(
        "--stall-slack",
        type=float,
        default=0.0,
        help="seconds added to the stall bound (a machine busy with other work)",
    )
    options = parser.parse_args(argv)
    return soak(
        options.minutes,
        options.seed,
        options.lines,
        options.dir,
        options.drain_minutes,
        options.stall_slack,
    )


if __name__ == "__main__":
    raise SystemExit(main())
