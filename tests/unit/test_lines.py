from __future__ import annotations

import json

import pytest

from kernel.jsonl import TooLong, iter_lines
from kernel.lines import LineError, normalize_request, parse_line
from kernel.results import is_success


def test_openai_line_is_kept_and_defaults_merge_under_it() -> None:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"prompt": "x", "max_tokens": 3, "stream": True},
    }
    request = normalize_request(line, defaults={"max_tokens": 9, "temperature": 0})
    assert request == {
        "custom_id": "a",
        "url": "/v1/completions",
        "body": {"prompt": "x", "max_tokens": 3, "temperature": 0},
    }


@pytest.mark.parametrize(
    ("line", "url"),
    [
        (
            {"custom_id": "a", "messages": [{"role": "user", "content": "x"}]},
            "/v1/chat/completions",
        ),
        ({"custom_id": "a", "prompt": "x"}, "/v1/completions"),
        ({"custom_id": "a", "input": "x"}, "/v1/embeddings"),
    ],
)
def test_shorthands_pick_their_endpoint(line: dict, url: str) -> None:
    request = normalize_request({**line, "max_tokens": 2})
    assert request["url"] == url
    assert request["body"]["max_tokens"] == 2
    assert "custom_id" not in request["body"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ([], "expected a JSON object, got list"),
        ({"prompt": "x"}, "missing 'custom_id'"),
        ({"custom_id": 5, "prompt": "x"}, "'custom_id' must be a non-empty string"),
        ({"custom_id": "a", "method": "GET", "prompt": "x"}, "'method' must be POST"),
        ({"custom_id": "a", "body": "x"}, "'body' must be an object, got str"),
        ({"custom_id": "a"}, "line needs 'body', 'messages', 'prompt' or 'input'"),
        ({"custom_id": "a", "url": "/v2/x", "body": {}}, "unknown url '/v2/x'"),
        ({"custom_id": "a", "body": {"prompt": "x"}}, "body for /v1/chat/completions needs"),
        ({"custom_id": "a", "messages": "hi"}, "'messages' must be a list"),
    ],
)
def test_invalid_lines_say_what_is_wrong(line: object, message: str) -> None:
    with pytest.raises(LineError) as error:
        normalize_request(line)
    assert str(error.value).startswith(message)


def test_parse_line_rejects_bad_json_and_huge_lines() -> None:
    with pytest.raises(LineError, match="not valid JSON"):
        parse_line(b"{nope", "/v1/completions", {})
    with pytest.raises(LineError, match="the limit is"):
        parse_line(b"x" * 1_000_001, "/v1/completions", {})


def test_iter_lines_across_chunks_and_over_the_limit() -> None:
    data = b'{"a": 1}\n' + b"y" * 25 + b"\nlast"
    chunks = [data[i : i + 4] for i in range(0, len(data), 4)]
    lines = list(iter_lines(chunks, max_bytes=20))
    assert lines[0] == b'{"a": 1}'
    assert isinstance(lines[1], TooLong) and lines[1].size == 25
    assert lines[2] == b"last"


def test_success_lines_are_recognised() -> None:
    ok = json.dumps({"id": "1", "custom_id": "a", "response": {}, "error": None}).encode()
    bad = json.dumps({"id": "1", "custom_id": "a", "response": {}, "error": {"m": 1}}).encode()
    assert is_success(ok) and not is_success(bad)
