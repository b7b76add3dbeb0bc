"""Every recorded workflow history replays against the current workflow code.

A change to a workflow that would break a batch running during a deploy (a different
sequence of commands for the same history) fails here as nondeterminism. Such a change
goes behind `workflow.patched("name")` so that old histories keep their old path.
Histories are recorded by `make record-histories` (tests/replay/record.py); the
`round1-*` files were recorded with the previous release's workflow code (what batches and
requests running on a box during a deploy of this code look like) and are kept as they are.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workers.workflows.batch import BatchWorkflow
from workers.workflows.process import ProcessWorkflow

HISTORIES = sorted((Path(__file__).resolve().parents[1] / "replay" / "histories").glob("*.json"))


def test_histories_are_recorded() -> None:
    names = {path.name.rsplit("-run", 1)[0] for path in HISTORIES}
    assert {"batch-completed", "batch-continued-as-new", "batch-cancelled", "process"} <= names
    assert {"round1-batch-no-valid-line", "round1-process"} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[path.stem for path in HISTORIES])
async def test_recorded_history_replays_deterministically(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[BatchWorkflow, ProcessWorkflow])
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
