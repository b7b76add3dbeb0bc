"""Every request accounted for: whatever a batch's shards left behind when it ended (all
finished, some partial, some never run, results from a later attempt), the merge writes
output and error files that hold every input line's custom_id exactly once, the requests
that never ran as error lines with the ending's code, and counts that add up to the total.

The batch's objects are written as the split and the shards write them; the merge activity
runs under ActivityEnvironment over an in-memory bucket here, and over the real S3 server in
tests/integration/test_accounting.py (same cases, `check_merge`).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.testing import ActivityEnvironment

from kernel.inputs import MergeInput
from kernel.keys import errors_key, invalid_lines_key, output_key, result_key, shard_key
from kernel.lifecycle import END_STATE
from kernel.results import UNFINISHED_ERRORS, unfinished_error
from tests.unit.test_batch_io import MemoryBucket
from workers.activities.batch_io import BatchIOActivities, invalid_line

REASONS = ["completed", "cancelled", "expired", "budget", "failed"]


@dataclass
class ShardFate:
    """What one shard left when the batch ended."""

    answered: list[bool]  # per request line: has an answer in the shard's result
    failed: list[bool]  # per request line: that answer is an error line
    attempts: int  # result objects written (0: never ran); the latest holds the answers


@dataclass
class Case:
    reason: str
    lines: list[str | None]  # per input line: "ok" (valid) or None (invalid, no custom_id)
    shard_size: int
    fates: list[ShardFate]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    reason = draw(st.sampled_from(REASONS))
    lines = draw(st.lists(st.sampled_from(["ok", "ok", "ok", None]), max_size=60))
    shard_size = draw(st.integers(min_value=1, max_value=12))
    valid = sum(1 for kind in lines if kind)
    shards = -(-valid // shard_size)
    fates = []
    for shard in range(shards):
        size = min(shard_size, valid - shard * shard_size)
        whole = reason == "completed"  # a completed batch ran every request
        answered = (
            [True] * size if whole else draw(st.lists(st.booleans(), min_size=size, max_size=size))
        )
        failed = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        ran = any(answered) or draw(st.booleans())
        attempts = draw(st.integers(min_value=1, max_value=3)) if ran or whole else 0
        fates.append(ShardFate(answered, failed, attempts))
    return Case(reason, lines, shard_size, fates)


def _put(client: Any, bucket: str, key: str, lines: list[dict[str, Any]]) -> None:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    client.put_object(bucket, key, io.BytesIO(data), length=len(data))


def write_batch(client: Any, bucket: str, batch_id: str, case: Case) -> dict[str, int]:
    """Writes the invalid lines, the shards and the shards' results as the split and
    run_shard do; returns the expected custom_id counts (None for an id-less invalid line)."""
    expected: Counter[Any] = Counter()
    invalid: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    for line_no, kind in enumerate(case.lines, start=1):
        if kind is None:
            invalid.append(invalid_line(line_no, None, "'body' must be an object"))
            expected[None] += 1
        else:
            custom_id = f"{batch_id}-r{line_no}"
            requests.append(
                {
                    "line": line_no,
                    "custom_id": custom_id,
                    "method": "POST",
                    "url": "/v1/x",
                    "body": {},
                }
            )
            expected[custom_id] += 1
    _put(client, bucket, invalid_lines_key(batch_id), invalid)
    for shard, fate in enumerate(case.fates):
        chunk = requests[shard * case.shard_size : (shard + 1) * case.shard_size]
        _put(client, bucket, shard_key(batch_id, shard), chunk)
        answers = [
            {
                "id": f"req_{request['custom_id']}",
                "custom_id": request["custom_id"],
                "response": None if failed else {"status_code": 200, "body": {}},
                "error": {"code": "server_error", "message": "no"} if failed else None,
            }
            for request, answered, failed in zip(chunk, fate.answered, fate.failed, strict=True)
            if answered
        ]
        for attempt in range(1, fate.attempts + 1):
            # An earlier attempt kept fewer answers; the latest holds every answer so far.
            kept = answers if attempt == fate.attempts else answers[: len(answers) // 2]
            _put(client, bucket, result_key(batch_id, shard, attempt), kept)
    return dict(expected)


def _read(client: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    response = client.get_object(bucket, key)
    try:
        data = b"".join(response.stream(1 << 20))
    finally:
        response.close()
        response.release_conn()
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def check_merge(client: Any, bucket: str, batch_id: str, case: Case) -> None:
    expected = write_batch(client, bucket, batch_id, case)
    total = len(case.lines)
    params = MergeInput(
        batch_id=batch_id,
        bucket=bucket,
        shard_count=len(case.fates),
        status=END_STATE[case.reason],  # type: ignore[index]
        total=total,
        created_at=0,
        end_reason=case.reason,
    )
    merged = ActivityEnvironment().run(BatchIOActivities(client).merge_results, params)
    output = _read(client, bucket, output_key(batch_id))
    errors = _read(client, bucket, errors_key(batch_id))

    assert Counter(line["custom_id"] for line in output + errors) == Counter(expected)
    assert merged.completed == len(output) and merged.failed == len(errors)
    assert merged.completed + merged.failed == total
    assert all(line["error"] is None for line in output)
    assert all(line["error"] is not None for line in errors)

    never_ran = [line for line in errors if line["error"]["code"] in _UNFINISHED_CODES]
    answered = sum(sum(f.answered) for f in case.fates if f.attempts)
    valid = sum(1 for kind in case.lines if kind)
    assert len(never_ran) == valid - answered
    code = unfinished_error(case.reason, "")
    assert all(line["error"]["code"] == code[0] for line in never_ran if code)
    assert all(isinstance(line["line"], int) for line in never_ran)


_UNFINISHED_CODES = {code for code, _ in UNFINISHED_ERRORS.values()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_custom_id_once_and_counts_add_up(case: Case) -> None:
    check_merge(MemoryBucket(), "x", "b", case)


def test_an_expired_batch_lists_what_never_ran_under_batch_expired() -> None:
    """Three shards: the first finished, the second was stopped half way, the third never
    started; six of the ten requests never ran."""
    case = Case(
        "expired",
        ["ok"] * 10,
        4,
        [
            ShardFate([True] * 4, [False, True, False, False], 1),
            ShardFate([True, False, True, False], [False] * 4, 2),
            ShardFate([False, False], [False, False], 0),
        ],
    )
    bucket = MemoryBucket()
    check_merge(bucket, "x", "b", case)
    errors = [json.loads(x) for x in bucket.objects[errors_key("b")].splitlines()]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("b-r2", "server_error"),
        ("b-r6", "batch_expired"),
        ("b-r8", "batch_expired"),
        ("b-r9", "batch_expired"),
        ("b-r10", "batch_expired"),
    ]


def test_a_merge_from_an_older_workflow_takes_the_code_from_the_status() -> None:
    """A merge scheduled before MergeInput carried end_reason (a recorded history replaying)
    still accounts for what never ran, by the final status."""
    bucket = MemoryBucket()
    case = Case("cancelled", ["ok"] * 3, 3, [ShardFate([True, False, False], [False] * 3, 1)])
    write_batch(bucket, "x", "b", case)
    params = MergeInput(
        batch_id="b", bucket="x", shard_count=1, status="cancelled", total=3, created_at=0
    )
    merged = ActivityEnvironment().run(BatchIOActivities(bucket).merge_results, params)  # type: ignore[arg-type]
    assert (merged.completed, merged.failed) == (1, 2)
    errors = [json.loads(x) for x in bucket.objects[errors_key("b")].splitlines()]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_every_ending_but_completed_has_a_code() -> None:
    assert unfinished_error("completed", "completed") is None
    assert unfinished_error("", "completed") is None
    assert unfinished_error("budget", "cancelled") == UNFINISHED_ERRORS["budget"]
    assert UNFINISHED_ERRORS["budget"][0] == "batch_budget_exceeded"
    assert UNFINISHED_ERRORS["cancelled"][0] == "batch_cancelled"
    assert UNFINISHED_ERRORS["expired"][0] == "batch_expired"


def test_a_batch_cancelled_before_its_split_accounts_for_every_input_line() -> None:
    """Cancelled while validating: no shard exists, so the merge reads the input itself and
    writes each line (a blank one is no line) as a batch_cancelled error line."""
    bucket = MemoryBucket()
    raw = b'{"custom_id": "a", "messages": []}\n\nnot json\n{"custom_id": "b", "prompt": "x"}\n'
    bucket.put_object("x", "in.jsonl", io.BytesIO(raw), length=len(raw))
    params = MergeInput(
        batch_id="b",
        bucket="x",
        shard_count=0,
        status="cancelled",
        total=0,
        created_at=0,
        end_reason="cancelled",
        unsplit_input_key="in.jsonl",
    )
    merged = ActivityEnvironment().run(BatchIOActivities(bucket).merge_results, params)  # type: ignore[arg-type]
    assert (merged.total, merged.completed, merged.failed) == (3, 0, 3)
    errors = [json.loads(x) for x in bucket.objects[errors_key("b")].splitlines()]
    assert [(e["custom_id"], e["line"], e["error"]["code"]) for e in errors] == [
        ("a", 1, "batch_cancelled"),
        (None, 3, "batch_cancelled"),
        ("b", 4, "batch_cancelled"),
    ]
    assert bucket.objects[output_key("b")] == b""
