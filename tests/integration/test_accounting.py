"""Every request accounted for, on the real stack, for every way a batch ends: the output and
error files (as the API serves them, and as the OpenAI view names them) hold each input
line's custom_id exactly once, the requests that never ran are error lines with the
ending's code, and request_counts add up to the total.

The batches are test_lifecycle's endings (a cancel while it runs, a completion window
shorter than the work, a budget one shard passes, plus a completed and a failed one), and
two that end half way on a warm stack, so that some shards finished, some were stopped part
way and some never ran: a cancel once answers arrive, and a 15-second completion window.
The merge's property test also runs here against the real S3 server.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from harness import batches
from harness.stack import Stack
from kernel.results import UNFINISHED_ERRORS
from tests.integration.test_lifecycle import REASONS, Ending, endings, priced_api  # noqa: F401
from tests.unit.test_accounting import Case, cases, check_merge

pytestmark = pytest.mark.integration

# The items test_lifecycle's endings submit, by end reason: (prefix, count).
SUBMITTED = {
    "completed": ("done", 5),
    "cancelled": ("can", 3000),
    "expired": ("exp", 3000),
    "budget": ("bud", 1500),
}
UNFINISHED_CODES = {code for code, _ in UNFINISHED_ERRORS.values()}


@pytest.fixture(scope="module")
def midway(stack: Stack, endings: dict[str, Ending]) -> dict[str, dict[str, Any]]:  # noqa: F811
    """A cancel and an expiry that each come after some answers and before the last: run
    once test_lifecycle's endings are over (so the workers and llama-server are warm)."""
    cancel = batches.submit(
        stack, items=batches.chat_items(3000, "mid-can", max_tokens=16), shard_size=100
    )["id"]
    expire = batches.submit(
        stack,
        items=batches.chat_items(3000, "mid-exp", max_tokens=16),
        shard_size=100,
        completion_window="15s",
    )["id"]
    batches.wait_until(stack, cancel, lambda b: b["request_counts"]["completed"] > 0, 120)
    assert stack.http.post(f"/batch/{cancel}/cancel").status_code == 200
    return {
        "cancelled": batches.wait_terminal(stack, cancel),
        "expired": batches.wait_terminal(stack, expire),
    }


@pytest.mark.parametrize("reason", ["cancelled", "expired"])
def test_a_batch_ended_half_way_accounts_for_the_rest(
    reason: str, stack: Stack, midway: dict[str, dict[str, Any]]
) -> None:
    batch = batches.get(stack, midway[reason]["id"])
    assert batch["status"] == batch["end_reason"] == reason
    output = batches.results(stack, batch["id"])
    errors = batches.errors(stack, batch["id"])
    prefix = "mid-can" if reason == "cancelled" else "mid-exp"
    expected = Counter(item["custom_id"] for item in batches.chat_items(3000, prefix))
    assert Counter(line["custom_id"] for line in output + errors) == expected
    counts = batch["request_counts"]
    assert (counts["total"], counts["completed"], counts["failed"]) == (
        3000,
        len(output),
        len(errors),
    )
    never_ran = [e for e in errors if e["error"]["code"] == UNFINISHED_ERRORS[reason][0]]
    assert output, f"the {reason} batch ended before any answer"
    assert never_ran, f"the {reason} batch ran every request"


def _expected_ids(reason: str) -> Counter[str]:
    if reason == "failed":
        return Counter({"no-body": 1, "no-body-2": 1})
    prefix, count = SUBMITTED[reason]
    return Counter(item["custom_id"] for item in batches.chat_items(count, prefix))


@pytest.mark.parametrize("reason", REASONS)
def test_output_and_errors_hold_every_custom_id_once(
    reason: str,
    stack: Stack,
    endings: dict[str, Ending],  # noqa: F811
) -> None:
    batch_id = endings[reason].batch["id"]
    batch = batches.get(stack, batch_id)
    output = batches.results(stack, batch_id)
    errors = batches.errors(stack, batch_id)

    assert Counter(line["custom_id"] for line in output + errors) == _expected_ids(reason)
    counts = batch["request_counts"]
    assert counts["total"] == len(output) + len(errors)
    assert (counts["completed"], counts["failed"]) == (len(output), len(errors))

    never_ran = [e for e in errors if e["error"]["code"] in UNFINISHED_CODES]
    if reason in ("completed", "failed"):
        assert never_ran == []
        return
    code = UNFINISHED_ERRORS[reason][0]
    assert never_ran, f"a {reason} batch of {counts['total']} requests ran them all"
    assert {e["error"]["code"] for e in never_ran} == {code}
    assert all(e["response"] is None and isinstance(e["line"], int) for e in never_ran)


@pytest.mark.parametrize("reason", ["cancelled", "expired", "budget"])
def test_the_openai_view_names_the_error_file(
    reason: str,
    stack: Stack,
    endings: dict[str, Ending],  # noqa: F811
) -> None:
    """An ending that left requests unrun has an error file, and its counts add up."""
    batch_id = endings[reason].batch["id"]
    response = stack.http.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    counts = body["request_counts"]
    assert counts["completed"] + counts["failed"] == counts["total"] > 0
    assert body["error_file_id"], body
    errors = stack.http.get(f"/v1/files/{body['error_file_id']}/content")
    assert errors.status_code == 200, errors.text
    assert len(errors.text.splitlines()) == counts["failed"]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases())
def test_the_merge_accounts_for_every_line_on_real_s3(stack: Stack, case: Case) -> None:
    bucket = stack.env.get("MINIO_BUCKET", "llm-batch")
    batch_id = f"acct_{abs(hash(repr(case))):x}"
    check_merge(stack.s3(), bucket, batch_id, case)
