"""Retry selection and the merge of a chain of retries (kernel.retry), and the retry links'
keys (kernel.keys)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from kernel import keys
from kernel.jsonl import TooLong
from kernel.retry import (
    INVALID_CODE,
    RetryCounts,
    chain_order,
    merged_errors,
    merged_results,
    select_shard,
    select_unsplit,
)


def _lines(values: Iterable[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(v).encode() for v in values]


def _request(n: int) -> dict[str, Any]:
    return {
        "line": n,
        "custom_id": f"q{n}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": str(n)}], "max_tokens": 4},
    }


def _answer(n: int, error: bool = False) -> dict[str, Any]:
    return {
        "id": f"r{n}",
        "custom_id": f"q{n}",
        "response": {"status_code": 400 if error else 200, "body": {}},
        "error": {"code": "llama_http_400", "message": "no"} if error else None,
    }


SHARD = _lines(_request(n) for n in range(1, 7))
# q1, q2 answered; q3 failed; q4..q6 never ran.
RESULT = _lines([_answer(1), _answer(2), _answer(3, error=True)])


def _ids(requests: Iterable[dict[str, Any]]) -> list[str]:
    return [r["custom_id"] for r in requests]


def test_a_stopped_batch_resends_failed_and_unfinished() -> None:
    counts = RetryCounts()
    chosen = list(
        select_shard(SHARD, RESULT, ran_all=False, failed=True, unfinished=True, counts=counts)
    )
    assert _ids(chosen) == ["q3", "q4", "q5", "q6"]
    assert (counts.failed, counts.unfinished, counts.left_out) == (1, 3, {})
    # The request is sent as it was, without the split's line number.
    assert chosen[0] == {k: v for k, v in _request(3).items() if k != "line"}


def test_each_kind_alone_and_what_is_left_out() -> None:
    counts = RetryCounts()
    only_failed = select_shard(
        SHARD, RESULT, ran_all=False, failed=True, unfinished=False, counts=counts
    )
    assert _ids(only_failed) == ["q3"]
    assert counts.left_out == {"unfinished": 3}
    counts = RetryCounts()
    only_unfinished = select_shard(
        SHARD, RESULT, ran_all=False, failed=False, unfinished=True, counts=counts
    )
    assert _ids(only_unfinished) == ["q4", "q5", "q6"]
    assert counts.left_out == {"failed": 1}


def test_a_batch_that_ran_everything_has_only_failures() -> None:
    counts = RetryCounts()
    chosen = select_shard(SHARD, RESULT, ran_all=True, failed=True, unfinished=True, counts=counts)
    assert _ids(chosen) == ["q3"]
    assert counts.unfinished == 0


def test_a_shard_that_never_started_is_all_unfinished() -> None:
    counts = RetryCounts()
    chosen = select_shard(SHARD, (), ran_all=False, failed=True, unfinished=True, counts=counts)
    assert _ids(chosen) == [f"q{n}" for n in range(1, 7)]
    assert counts.unfinished == 6


def test_an_unsplit_input_leaves_invalid_lines_out() -> None:
    raw: list[bytes | TooLong] = [
        b'{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}',
        b"",
        b"not json",
        b'{"custom_id": "b", "prompt": "x"}',
        TooLong(10**9),
        b'{"messages": []}',
    ]
    counts = RetryCounts()
    chosen = list(
        select_unsplit(
            raw, "/v1/chat/completions", {"max_tokens": 3}, unfinished=True, counts=counts
        )
    )
    assert _ids(chosen) == ["a", "b"]
    assert chosen[0]["body"]["max_tokens"] == 3  # the batch's defaults, as its split merges them
    assert counts.unfinished == 2
    assert counts.left_out == {INVALID_CODE: 3}
    counts = RetryCounts()
    assert not list(
        select_unsplit(raw, "/v1/chat/completions", {}, unfinished=False, counts=counts)
    )
    assert counts.left_out == {INVALID_CODE: 3, "unfinished": 2}


def _source(lines: list[dict[str, Any]]) -> Any:
    return lambda: _lines(lines)


def test_merged_results_one_line_per_custom_id_newest_wins() -> None:
    original = [_answer(1), _answer(2)]
    first_retry = [{**_answer(3), "id": "first"}]
    second_retry = [{**_answer(3), "id": "second"}, _answer(4)]
    merged = [
        json.loads(line)
        for line in merged_results([_source(second_retry), _source(first_retry), _source(original)])
    ]
    ids = [line["custom_id"] for line in merged]
    assert sorted(ids) == ["q1", "q2", "q3", "q4"]
    assert next(line for line in merged if line["custom_id"] == "q3")["id"] == "second"


def test_merged_errors_hold_only_what_no_batch_answered() -> None:
    outputs = [_source([_answer(3)]), _source([_answer(1)])]  # retry, original
    unfinished = {"id": None, "custom_id": "q4", "line": 1, "error": {"code": "batch_cancelled"}}
    errors = [
        _source([{**_answer(2, error=True), "id": "newer"}]),  # the retry's
        _source(
            [
                _answer(3, error=True),  # answered by the retry: gone
                {**_answer(2, error=True), "id": "older"},
                unfinished,
                {"id": None, "custom_id": None, "line": 9, "error": {"code": INVALID_CODE}},
            ]
        ),
    ]
    merged = [json.loads(line) for line in merged_errors(outputs, errors)]
    assert [(m["custom_id"], m["id"]) for m in merged] == [
        ("q2", "newer"),
        ("q4", None),
        (None, None),
    ]


def test_sources_are_opened_only_when_reached() -> None:
    opened: list[str] = []

    def source(name: str) -> Any:
        def lines() -> list[bytes]:
            opened.append(name)
            return _lines([_answer(1)])

        return lines

    stream = merged_results([source("new"), source("old")])
    assert opened == []
    next(stream)
    assert opened == ["new"]
    list(stream)
    assert opened == ["new", "old"]


def test_chain_order_newest_first() -> None:
    assert chain_order([("batch_a", 10), ("batch_c", 30), ("batch_b", 20)]) == [
        "batch_c",
        "batch_b",
        "batch_a",
    ]


def test_retry_link_keys_round_trip() -> None:
    original, retry = "batch_" + "a" * 32, "batch_" + "b" * 32
    key = keys.retry_link_key(original, retry)
    assert key.startswith(keys.retry_links_prefix(original))
    assert key.startswith(keys.batch_objects_prefix(original))  # deleted with the batch
    assert keys.parse_retry_link_key(original, key) == retry
    assert keys.parse_retry_link_key(original, keys.output_key(original)) is None
    assert keys.parse_retry_link_key(retry, key) is None
