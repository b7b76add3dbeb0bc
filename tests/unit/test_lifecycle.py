"""The batch lifecycle (kernel.lifecycle) and what derives from it without servers: the
stored status, the read view's frozen rates, the API's reading of a closed workflow, the
CLI's exit codes and the dashboard's script."""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowExecutionStatus
from typer.testing import CliRunner

import cli.main as main
import kernel.lifecycle as lifecycle
import kernel.status
import kernel.view
from app.services.batches import batch_status
from app.services.metrics import BATCH_STATES
from cli.client import Api
from kernel.lifecycle import (
    ALL_STATES,
    END_STATE,
    FINAL_STATES,
    STATES,
    can_move,
    exit_code,
    timestamp_field,
)
from kernel.status import BatchStatus
from kernel.view import BatchView, ended_at

REPO = Path(__file__).resolve().parents[2]

# The table docs/lifecycle.md shows: state -> (final, timestamp, exit code).
TABLE: dict[str, tuple[bool, str, int | None]] = {
    "validating": (False, "created_at", None),
    "in_progress": (False, "in_progress_at", None),
    "finalizing": (False, "finalizing_at", None),
    "cancelling": (False, "cancelling_at", None),
    "completed": (True, "completed_at", 0),
    "failed": (True, "failed_at", 1),
    "cancelled": (True, "cancelled_at", 3),
    "expired": (True, "expired_at", 5),
}
# Every way a batch ends, the final state it gives and the CLI's exit code.
ENDINGS = [
    ("completed", "completed", 0),
    ("failed", "failed", 1),
    ("cancelled", "cancelled", 3),
    ("expired", "expired", 5),
    ("budget", "cancelled", 3),
]


def test_the_table_is_the_definition() -> None:
    assert set(STATES) == set(TABLE)
    for state, (final, stamp, code) in TABLE.items():
        assert STATES[state].final is final, state  # type: ignore[index]
        assert STATES[state].timestamp == stamp  # type: ignore[index]
        assert STATES[state].exit_code == code  # type: ignore[index]
    assert FINAL_STATES == {"completed", "failed", "cancelled", "expired"}


def test_every_final_state_has_its_own_exit_code_apart_from_the_cli_codes() -> None:
    codes = [STATES[state].exit_code for state in FINAL_STATES]
    assert len(set(codes)) == len(codes)
    assert not set(codes) & {lifecycle.EXIT_USAGE, lifecycle.EXIT_UNREACHABLE}
    assert exit_code("expired") == lifecycle.EXIT_EXPIRED == 5
    assert exit_code("in_progress") == 0 and exit_code("no-such-state") == 0


@pytest.mark.parametrize(("reason", "state", "code"), ENDINGS)
def test_each_ending_gives_one_final_state(reason: str, state: str, code: int) -> None:
    assert END_STATE[reason] == state  # type: ignore[index]
    assert exit_code(state) == code


def test_transitions_lead_from_validating_to_every_state_and_end_in_a_final_one() -> None:
    reached = {"validating"}
    frontier = ["validating"]
    while frontier:
        for nxt in STATES[frontier.pop()].next:  # type: ignore[index]
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(ALL_STATES)
    for state, info in STATES.items():
        assert info.final == (not info.next), state  # final states go nowhere
        if not info.final:
            assert "failed" in info.next  # a run can always die
    assert can_move("in_progress", "expired") and can_move("cancelling", "cancelled")
    assert not can_move("completed", "in_progress") and not can_move("expired", "cancelling")
    assert not can_move("validating", "completed")


def test_every_state_timestamp_is_a_status_field() -> None:
    for state in ALL_STATES:
        assert timestamp_field(state) in BatchStatus.model_fields


def test_metrics_label_every_state() -> None:
    assert set(BATCH_STATES) == set(ALL_STATES)


def test_no_wall_clock_in_what_a_workflow_builds() -> None:
    """The stored status has no computed field, and neither it nor the view imports a
    clock: the view takes `now` from its caller."""
    assert BatchStatus.model_computed_fields == {}
    for module in (kernel.status, kernel.view, lifecycle):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [node])  # type: ignore[list-item]
            if isinstance(alias, ast.alias)
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & {"time", "datetime"}, module.__name__


def finished(state: str, **changes: Any) -> BatchStatus:
    base: dict[str, Any] = {
        "id": "batch_1",
        "status": state,
        "created_at": 990,
        "in_progress_at": 1_000,
        "request_counts": {"total": 100, "completed": 40, "failed": 10},
        "usage": {"input_tokens": 500, "output_tokens": 1_000, "total_tokens": 1_500},
        "gpu_seconds": 20.0,
        "boxes": {"box-a": 50},
        "gpu_price_per_hour": 3.6,
        timestamp_field(state): 1_010,  # type: ignore[arg-type]
    }
    return BatchStatus.model_validate({**base, **changes})


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_rates_of_a_final_batch_are_frozen_at_ended_at(state: str) -> None:
    batch = finished(state)
    first, later = BatchView.of(batch, 1_020.0), BatchView.of(batch, 5_000.0)
    assert first == later
    assert first.is_terminal and first.ended_at == 1_010
    assert first.elapsed_seconds == 10 and first.requests_per_second == 5
    assert first.seconds_left == 0
    assert first.cost_usd == pytest.approx(3.6 * 10 / 3600)


def test_a_running_batch_reads_the_callers_clock() -> None:
    update = {"status": "in_progress", "end_reason": None, "completed_at": None}
    batch = finished("completed").model_copy(update=update)
    view = BatchView.of(batch, 1_020.0)
    assert not view.is_terminal and view.ended_at is None
    assert view.elapsed_seconds == 20 and BatchView.of(batch, 1_040.0).elapsed_seconds == 40
    assert view.seconds_left == 20  # 50 left at 2.5/s


def test_a_final_batch_without_its_timestamp_ends_at_its_latest_one() -> None:
    terminated = finished("failed", failed_at=None, cancelling_at=1_007)
    assert ended_at(terminated) == 1_007
    assert BatchView.of(terminated, 9_999.0).elapsed_seconds == 7


def test_end_reason_of_batches_published_before_it_existed() -> None:
    budget = finished("cancelled", errors={"message": "budget reached: the batch cost $1"})
    assert budget.end_reason == "budget"
    assert finished("cancelled").end_reason == "cancelled"
    assert finished("expired").end_reason == "expired"
    update = {"status": "in_progress", "end_reason": None}
    running = finished("completed").model_copy(update=update)
    assert BatchStatus.model_validate(running.model_dump()).end_reason is None


def memo(state: str, **changes: Any) -> dict[str, Any]:
    return finished(state, **changes).model_dump(mode="json")


def test_a_closed_workflow_gives_the_final_state_and_its_timestamp() -> None:
    closed = datetime.fromtimestamp(1_050, UTC)
    running = {**memo("completed"), "status": "in_progress", "completed_at": None}
    running["end_reason"] = None
    for execution in (WorkflowExecutionStatus.TERMINATED, WorkflowExecutionStatus.TIMED_OUT):
        batch = batch_status("batch_1", execution, running, closed)
        assert (batch.status, batch.end_reason, batch.failed_at) == ("failed", "failed", 1_050)
        assert BatchView.of(batch, 2_000).ended_at == 1_050
    ok = WorkflowExecutionStatus.COMPLETED
    expired = batch_status("batch_1", ok, memo("expired"), closed)
    assert (expired.status, expired.end_reason, expired.expired_at) == ("expired", "expired", 1_010)
    budget = {**memo("cancelled"), "end_reason": "budget"}
    stopped = batch_status("batch_1", ok, budget, closed)
    assert (stopped.status, stopped.end_reason) == ("cancelled", "budget")
    cancelling = {**running, "status": "cancelling", "cancelling_at": 1_040}
    cancelled = batch_status("batch_1", WorkflowExecutionStatus.CANCELED, cancelling, closed)
    assert (cancelled.status, cancelled.cancelled_at) == ("cancelled", 1_050)


@pytest.mark.parametrize(("reason", "state", "code"), ENDINGS)
def test_cli_status_and_watch_end_with_the_final_states_code(
    reason: str, state: str, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` and `watch` read the API's view: `watch` returns at once in every final
    state (it polled forever on an expired batch), both with the state's exit code."""
    view = BatchView.of(finished(state, end_reason=reason), 2_000).model_dump(mode="json")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=view))
    monkeypatch.setattr(main, "Api", lambda target: Api(target, transport=transport))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main.app, ["--url", "http://api.test", "--json", "status", "b"])
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["end_reason"] == reason
    result = runner.invoke(main.app, ["--url", "http://api.test", "watch", "b"])
    assert result.exit_code == code, result.output
    assert f"batch_1 {state}" in result.output


def test_dashboard_script_keeps_no_list_of_states() -> None:
    """app.js reads is_terminal from the API; no list or map of its own names a state."""
    script = (REPO / "app/web/static/app.js").read_text()
    assert "batch.is_terminal" in script
    for state in ALL_STATES:
        assert not re.search(rf'\[[^\]]*"{state}"', script), state  # in an array
        assert not re.search(rf"\b{state}:", script), state  # a key of an object literal
