"""Every recorded workflow history of a live release replays against the current workflow code.

`tests/replay/histories/<release>/` holds what one release's workflow code recorded
(`make record-histories` records the current release's); a folder is kept while workflows
that release started may still be running, and deleted when the release is retired (the
rule, and each patch's way from `workflow.patched` through `workflow.deprecate_patch` to
removal: docs/workflow-versioning.md; which release recorded which folder:
tests/replay/histories/README.md). A change to a workflow that would break a batch running
during a deploy (a different sequence of commands for the same history) fails here as
nondeterminism.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.replay import CURRENT_RELEASE, HISTORIES
from workers.workflows.batch import BatchWorkflow
from workers.workflows.process import ProcessWorkflow

RELEASES = sorted(path for path in HISTORIES.iterdir() if path.is_dir())
LIVE = sorted(HISTORIES.glob("*/*.json"))
# The paths the recorder runs (tests/replay/record.py): every live release has each of them.
SCENARIOS = {
    "batch-budget",
    "batch-cancelled",
    "batch-completed",
    "batch-continued-as-new",
    "batch-expired",
    "batch-follow-capacity",
    "batch-no-valid-line",
    "process",
}


def _events(path: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(path.read_text())["events"]
    return events


def _patch_markers(path: Path) -> list[dict[str, Any]]:
    """The `workflow.patched` / `deprecate_patch` markers in a history: {"id", "deprecated"}."""
    markers = []
    for event in _events(path):
        attributes = event.get("markerRecordedEventAttributes") or {}
        if attributes.get("markerName") == "core_patch":
            payload = attributes["details"]["patch-data"]["payloads"][0]["data"]
            markers.append(json.loads(base64.b64decode(payload)))
    return markers


def test_each_live_release_recorded_every_path() -> None:
    assert HISTORIES / CURRENT_RELEASE in RELEASES, "make record-histories"
    for release in RELEASES:
        names = {path.name.rsplit("-run", 1)[0] for path in release.glob("*.json")}
        assert names == SCENARIOS, release.name


@pytest.mark.parametrize("path", LIVE, ids=[f"{p.parent.name}/{p.stem}" for p in LIVE])
async def test_recorded_history_replays_deterministically(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[BatchWorkflow, ProcessWorkflow])
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.parent.name}/{path.name}: {result.replay_failure}"


def test_no_live_history_runs_a_request_as_a_normal_activity() -> None:
    """Only round1's single-request workflow ran on the CPU worker and sent its request to the
    GPU queue as a normal activity: no live history does, so the CPU worker does not serve
    that workflow and the GPU queue keeps no activity slot for requests beyond the room the
    box reports (workers/registry.py)."""
    for path in LIVE:
        scheduled = [
            event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
            for event in _events(path)
            if event["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
        ]
        assert "process_request" not in scheduled, path


def test_patch_markers_of_live_releases() -> None:
    """Each patch's state in each live release: the markers its histories hold. A
    `workflow.patched` call may become `deprecate_patch` once no live history took its old
    branch, and go once every marker of it in live histories is deprecated."""
    found = {
        (path.parent.name, marker["id"], marker["deprecated"])
        for path in LIVE
        for marker in _patch_markers(path)
    }
    # round2's undeprecated markers made round3 keep `deprecate_patch`; with round2 retired,
    # round4 calls neither. round4 patches `per-box-cost` (batch.py: the budget sums each
    # box's time at its own price; round3's budget history keeps the single price).
    assert found == {
        ("round3", "cancel-publishes-first", True),
        ("round3", "request-as-local-activity", True),
        ("round4", "per-box-cost", False),
    }
