"""Full disks: S3's data folder, then Temporal's, on a small filesystem made for the test and
filled mid-batch. The batch pauses (no failed line), /health names the full disk, new
uploads and batches get 507 naming it, and once space is freed the batch resumes by itself
and completes with every custom_id exactly once.

The small filesystem is a tmpfs mounted (as root) exactly where the stack keeps that data,
before the stack starts; teardown stops the stack by its supervisord pid, then unmounts.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from harness import batches
from harness.stack import Stack, start_stack

pytestmark = pytest.mark.integration

DISK_MB = 40
MIN_FREE_MB = 8
ITEMS = 400
SHARD = 20
FULL_SECONDS = 45.0


def _unmount(path: Path) -> None:
    for _ in range(30):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(1)  # a server's files may still be closing
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_MB at `path` for the duration."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem for the test needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        _unmount(path)


def fill(folder: Path) -> Path:
    """Writes one big file into `folder` until its filesystem has no room left."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            block = b"\xa5" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


@contextmanager
def stack_with_small_disk(base: Path, component: str) -> Iterator[Stack]:
    with small_disk(base / "data" / component):
        stack = start_stack(
            base,
            DISK_MIN_FREE_MB=str(MIN_FREE_MB),
            LLAMA_CTX_PER_SLOT="512",
            WORKER_IDLE_EXIT_SECONDS="60",
        )
        try:
            yield stack
        finally:
            stack.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # the API may be answering slowly while a server restarts
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout:g}s")


def completed(stack: Stack, batch_id: str) -> int:
    return int(batches.get(stack, batch_id)["request_counts"]["completed"])


def upload(stack: Stack, name: str) -> Any:
    line = {"custom_id": "u0", "method": "POST", "url": "/v1/chat/completions"}
    line["body"] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return stack.http.post(
        "/v1/files",
        files={"file": (name, json.dumps(line).encode() + b"\n", "application/jsonl")},
        data={"purpose": "batch"},
    )


def full_disk_run(stack: Stack, component: str, check: str, prefix: str) -> dict[str, float]:
    """Fills `component`'s folder mid-batch, checks what the user sees, frees it; returns
    the figures."""
    folder = stack.data_dir / component
    uploaded = upload(stack, "before.jsonl")
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    health = stack.health()
    disk = health["checks"][check]["disks"][component]
    assert disk["status"] == "ok" and disk["path"] == str(folder), disk

    items = batches.chat_items(ITEMS, prefix=prefix)
    batch = batches.submit(stack, items=items, shard_size=SHARD)
    batch_id = batch["id"]
    batches.wait_until(stack, batch_id, lambda b: b["request_counts"]["completed"] >= 2 * SHARD)

    used = os.statvfs(folder)
    used_bytes = (used.f_blocks - used.f_bfree) * used.f_frsize
    filler = fill(folder)
    filled_at = time.monotonic()
    before = completed(stack, batch_id)

    def named() -> dict[str, Any] | None:
        entry: dict[str, Any] = stack.health()["checks"][check]
        return entry if entry["status"] == "error" and "is full" in entry["message"] else None

    entry = wait_for(named, 30, f"/health naming the full {component} disk")
    assert str(folder) in entry["message"] and "bytes free" in entry["message"], entry
    assert entry["disks"][component]["status"] == "full", entry

    refused = stack.http.post("/batch", json={"items": batches.chat_items(2, prefix="x")})
    assert refused.status_code == 507, refused.text
    error = refused.json()["error"]
    assert error["type"] == "insufficient_storage" and str(folder) in error["message"], error
    openai_batch = stack.http.post(
        "/v1/batches",
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert openai_batch.status_code == 507, openai_batch.text
    assert str(folder) in openai_batch.json()["error"]["message"]
    refused_upload = upload(stack, "during.jsonl")
    assert refused_upload.status_code == 507, refused_upload.text
    assert str(folder) in refused_upload.json()["error"]["message"]

    # The batch pauses: no failed line, no failed batch, while the disk stays full.
    samples: list[tuple[float, int | str]] = []
    while time.monotonic() - filled_at < FULL_SECONDS:
        try:
            state = batches.get(stack, batch_id)
        except (AssertionError, OSError) as exc:  # Temporal restarting: say so, go on
            error = str(exc).splitlines()[0][:120]
            samples.append((round(time.monotonic() - filled_at, 1), f"unreadable: {error}"))
        else:
            counts = state["request_counts"]
            samples.append((round(time.monotonic() - filled_at, 1), counts["completed"]))
            assert state["status"] in ("in_progress", "validating", "finalizing"), state
            assert counts["failed"] == 0, state
        time.sleep(3)
    # With Temporal's disk full the status may be unreadable (503): count from the fill.
    readable = [count for _, count in samples if isinstance(count, int)]
    paused_at = max(readable, default=before)

    filler.unlink()
    freed_at = time.monotonic()
    wait_for(
        lambda: stack.health()["checks"][check]["disks"][component]["status"] == "ok",
        30,
        "/health seeing the space back",
    )

    def moved_on() -> dict[str, Any] | None:
        state = batches.get(stack, batch_id)
        going = state["request_counts"]["completed"] > paused_at or state["status"] != "in_progress"
        return state if going else None

    resumed = wait_for(moved_on, 300, "progress after the space came back")
    resumed_after = time.monotonic() - freed_at
    done = wait_for(
        lambda: (state := batches.get(stack, batch_id))["status"] in batches.TERMINAL and state,
        600,
        "the batch's end",
    )
    finished_after = time.monotonic() - freed_at
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    batches.assert_exactly_once(
        batches.results(stack, batch_id), {f"{prefix}{i}" for i in range(ITEMS)}
    )
    assert batches.errors(stack, batch_id) == []
    accepted = stack.http.post("/batch", json={"items": batches.chat_items(2, prefix="y")})
    assert accepted.status_code == 202, accepted.text
    figures = {
        "completed_when_filled": before,
        "completed_when_freed": paused_at,
        "full_seconds": round(freed_at - filled_at, 1),
        "resumed_after_free_s": round(resumed_after, 1),
        "completed_after_free_s": round(finished_after, 1),
        "resumed_status": resumed["status"],
        "folder_used_mb_when_filled": round(used_bytes / (1 << 20), 1),
    }
    print(f"\nfull {component} disk: {json.dumps(figures)}\nsamples (s, completed): {samples}")
    return figures


def test_s3_disk_full_mid_batch_pauses_and_resumes(tmp_path: Path) -> None:
    with stack_with_small_disk(tmp_path, "s3") as stack:
        figures = full_disk_run(stack, "s3", "s3", "s")
        # Shards answered while the disk was full could not store their results: the
        # batch stood still (a shard's write retries), it did not run on or fail.
        assert figures["completed_when_freed"] <= figures["completed_when_filled"] + 2 * SHARD


def test_temporal_disk_full_mid_batch_loses_nothing(tmp_path: Path) -> None:
    with stack_with_small_disk(tmp_path, "temporal") as stack:
        full_disk_run(stack, "temporal", "temporal", "t")
        programs = stack.health()["checks"]["supervisor"]["programs"]
        print(f"temporal after: {programs['temporal']}")
        log = (stack.log_dir / "temporal.log").read_text(errors="replace")
        full = [line for line in log.splitlines() if "full" in line.lower()][:5]
        print("temporal.log lines about the full disk:\n" + "\n".join(full))
