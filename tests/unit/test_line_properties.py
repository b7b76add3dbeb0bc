"""Property tests: whatever a line holds, the parser returns a request or a LineError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.endpoints import ENDPOINTS, MAX_LINE_BYTES
from kernel.jsonl import TooLong, iter_lines
from kernel.lines import MAX_DEPTH, LineError, parse_line

# Text with every code point, lone surrogates included (JSON can carry them escaped).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=30,
)
request_keys = st.sampled_from(
    ["custom_id", "method", "url", "body", "messages", "prompt", "input", "stream"]
)
# Objects shaped like request lines, so the property also reaches the deeper checks.
line_like = st.dictionaries(
    st.one_of(request_keys, any_text),
    st.one_of(json_values, st.sampled_from(["POST", *ENDPOINTS]), st.just([])),
    max_size=6,
)
defaults = st.dictionaries(any_text, json_values, max_size=3)

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_request_or_line_error(raw: bytes, defaults: dict[str, Any] | None = None) -> None:
    try:
        request = parse_line(raw, "/v1/chat/completions", defaults or {})
    except LineError as exc:
        assert str(exc)
        return
    assert set(request) == {"custom_id", "url", "body"}
    assert isinstance(request["custom_id"], str) and request["custom_id"].strip()
    assert request["url"] in ENDPOINTS
    # What the split writes to a shard and later sends to llama-server is strict UTF-8 JSON.
    encoded = json.dumps(request, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert json.loads(encoded) == request


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_request_or_a_line_error(raw: bytes) -> None:
    assert_request_or_line_error(raw)


@SETTINGS
@given(json_values)
def test_arbitrary_json_gives_a_request_or_a_line_error(value: Any) -> None:
    assert_request_or_line_error(json.dumps(value).encode())


@SETTINGS
@given(line_like, defaults)
def test_line_shaped_json_with_defaults_gives_a_request_or_a_line_error(
    line: dict[str, Any], merged_defaults: dict[str, Any]
) -> None:
    assert_request_or_line_error(json.dumps(line).encode(), merged_defaults)


@SETTINGS
@given(st.lists(st.binary(max_size=50), max_size=8), st.integers(min_value=1, max_value=64))
def test_line_splitter_keeps_every_line_whatever_the_chunking(
    pieces: list[bytes], chunk: int
) -> None:
    data = b"".join(pieces)
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    lines = list(iter_lines(chunks, max_bytes=40))
    expected = data.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert len(lines) == len(expected)
    for got, want in zip(lines, expected, strict=True):
        if len(want) > 40:
            assert isinstance(got, TooLong) and got.size == len(want)
        else:
            assert got == want


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"custom_id": "\\ud800", "prompt": "x"}', "lone surrogate"),
        (b'{"custom_id": "a", "prompt": "\\udfff"}', "lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, f"deeper than {MAX_DEPTH}"),
        (b'{"custom_id": "a", "prompt": ' + b"[" * 200 + b"]" * 200 + b"}", "deeper"),
        (b'{"custom_id": "a", "prompt": ' + b"9" * 5000 + b"}", "4300 digits"),
        (b'{"custom_id": "a", "prompt": "\xff"}', "not valid UTF-8 at byte 30"),
        (b'{"custom_id": "a\x00", "prompt": "x"}', "not valid JSON"),
        (b"\x00\x00\x00{", "not valid JSON"),
        (b'{"custom_id": "a", "prompt": NaN}', "NaN is not a JSON number"),
        (b'{"custom_id": "a", "prompt": 1e999}', "cannot be written as JSON"),
        (b'{"custom_id": "a", "prompt": "x", "method": ' + b"[" * 60 + b"]" * 60 + b"}", "POST"),
    ],
)
def test_nasty_lines_are_line_errors_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(LineError, match=reason.replace("(", r"\(")):
        parse_line(raw, "/v1/chat/completions", {})


def test_defaults_count_toward_the_line_limit_after_merging() -> None:
    raw = json.dumps({"custom_id": "a", "prompt": "x" * 1000}).encode()
    big = {"system_prompt_padding": "y" * MAX_LINE_BYTES}
    with pytest.raises(LineError, match="once 'defaults' are merged.*MAX_LINE_BYTES"):
        parse_line(raw, "/v1/completions", big)
    assert parse_line(raw, "/v1/completions", {"max_tokens": 4})["body"]["max_tokens"] == 4


def test_a_byte_order_mark_is_ignored() -> None:
    raw = b"\xef\xbb\xbf" + json.dumps({"custom_id": "a", "prompt": "x"}).encode()
    assert parse_line(raw, "/v1/completions", {})["custom_id"] == "a"


def test_line_limit_is_checked_before_parsing() -> None:
    with pytest.raises(LineError, match="the limit is"):
        parse_line(b" " * (MAX_LINE_BYTES + 1), "/v1/completions", {})
