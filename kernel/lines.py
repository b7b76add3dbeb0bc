"""Request lines: the OpenAI batch line and its shorthands, validated and normalised.

Every problem is a `LineError` whose message says what is wrong; the caller adds where.
Whatever bytes a line holds, `parse_line` returns a request or raises `LineError`, never
anything else: invalid UTF-8, lone surrogates (`"\\ud800"`), nesting deeper than
`MAX_DEPTH`, integers past Python's digit limit, NaN/Infinity and requests that grow past
`MAX_LINE_BYTES` once `defaults` are merged all become line errors.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from kernel.endpoints import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, ENDPOINTS, MAX_LINE_BYTES

MAX_CUSTOM_ID_LENGTH = 512
# JSON nesting deeper than this is refused (llama-server requests are a few levels deep);
# far below the depth at which Python's json module hits the recursion limit.
MAX_DEPTH = 64
_SHORTHAND_ENDPOINTS = {"messages": CHAT_COMPLETIONS, "prompt": COMPLETIONS, "input": EMBEDDINGS}
_REQUIRED_FIELD = {CHAT_COMPLETIONS: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input"}
_ENVELOPE_KEYS = frozenset({"custom_id", "method", "url", "body"})
_SHOWN_CHARS = 60


class LineError(ValueError):
    def __init__(self, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.custom_id = custom_id


def _show(value: Any) -> str:
    """A short repr for messages (values come from users and can be huge)."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else "<int>"
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _refuse_constant(name: str) -> NoReturn:
    raise LineError(f"{name} is not a JSON number; use null or a finite number")


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when containers nest deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_json_value(value: Any, what: str = "line") -> int:
    """Raises LineError unless `value` can be written as UTF-8 JSON that any server reads
    (bounded depth, no lone surrogates); returns its encoded size in bytes."""
    if _depth_exceeds(value, MAX_DEPTH):
        raise LineError(f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
        code = f" (U+{ord(bad[0]):04X})" if bad else ""
        raise LineError(
            f"{what} holds a lone surrogate{code}, which is not valid Unicode"
        ) from None
    except ValueError as exc:  # NaN/Infinity, integers past the digit limit
        raise LineError(f"{what} cannot be written as JSON: {exc}") from None
    except RecursionError:
        raise LineError(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    return len(encoded)


def normalize_request(
    line: Any, endpoint: str = CHAT_COMPLETIONS, defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Returns {"custom_id", "url", "body"} for a parsed line, or raises LineError."""
    if not isinstance(line, dict):
        raise LineError(f"expected a JSON object, got {type(line).__name__}")
    if set(line) == {"invalid_item"} and isinstance(line["invalid_item"], str):
        raise LineError(line["invalid_item"][:200])  # staged so by the API for an item
    custom_id = line.get("custom_id")
    if custom_id is None:
        raise LineError("missing 'custom_id'")
    if not isinstance(custom_id, str) or not custom_id.strip():
        raise LineError("'custom_id' must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
        raise LineError(f"'custom_id' is longer than {MAX_CUSTOM_ID_LENGTH} characters")
    try:
        custom_id.encode("utf-8")
    except UnicodeEncodeError:
        raise LineError("'custom_id' holds a lone surrogate, which is not valid Unicode") from None
    method = line.get("method", "POST")
    if method != "POST":
        raise LineError(f"'method' must be POST, got {_show(method)}", custom_id)

    if "body" in line:
        body = line["body"]
        if not isinstance(body, dict):
            raise LineError(f"'body' must be an object, got {type(body).__name__}", custom_id)
        url = line.get("url", endpoint)
    else:
        shorthand = next((key for key in _SHORTHAND_ENDPOINTS if key in line), None)
        if shorthand is None:
            raise LineError("line needs 'body', 'messages', 'prompt' or 'input'", custom_id)
        body = {key: value for key, value in line.items() if key not in _ENVELOPE_KEYS}
        url = line.get("url", _SHORTHAND_ENDPOINTS[shorthand])
    if not isinstance(url, str) or url not in ENDPOINTS:
        raise LineError(
            f"unknown url {_show(url)}; expected one of {', '.join(ENDPOINTS)}", custom_id
        )

    merged = {**(defaults or {}), **body}
    required = _REQUIRED_FIELD[url]
    if required not in merged:
        raise LineError(f"body for {url} needs '{required}'", custom_id)
    if url == CHAT_COMPLETIONS and not isinstance(merged["messages"], list):
        raise LineError("'messages' must be a list of {role, content} objects", custom_id)
    # Results are collected whole; streaming makes no sense in a batch.
    merged.pop("stream", None)
    try:
        size = check_json_value(merged, "request body")
    except LineError as exc:
        raise LineError(str(exc), custom_id) from None
    if size > MAX_LINE_BYTES:
        raise LineError(
            f"request body is {size} bytes once 'defaults' are merged; the per-line limit "
            f"is {MAX_LINE_BYTES} (MAX_LINE_BYTES)",
            custom_id,
        )
    return {"custom_id": custom_id, "url": url, "body": merged}


def loads_line(raw: bytes) -> Any:
    """The JSON value of one line; raises LineError for anything that is not strict JSON."""
    if len(raw) > MAX_LINE_BYTES:
        raise LineError(f"line is {len(raw)} bytes; the limit is {MAX_LINE_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not valid UTF-8 at byte {exc.start}") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except LineError:
        raise
    except json.JSONDecodeError as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise LineError(f"line nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # integers with more digits than Python converts
        raise LineError(f"not usable JSON: {exc}") from None


def parse_line(raw: bytes, endpoint: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Parses one JSONL line into a request; raises LineError, and only LineError."""
    parsed = loads_line(raw)
    if _depth_exceeds(parsed, MAX_DEPTH):
        raise LineError(f"line nests deeper than {MAX_DEPTH} levels")
    return normalize_request(parsed, endpoint, defaults)
