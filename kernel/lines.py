"""Request lines: the OpenAI batch line and its shorthands, validated and normalised.

Every problem is a `LineError` whose message says what is wrong; the caller adds where.
"""

from __future__ import annotations

import json
from typing import Any

from kernel.contract import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    EMBEDDINGS,
    ENDPOINTS,
    MAX_LINE_BYTES,
)

MAX_CUSTOM_ID_LENGTH = 512
_SHORTHAND_ENDPOINTS = {"messages": CHAT_COMPLETIONS, "prompt": COMPLETIONS, "input": EMBEDDINGS}
_REQUIRED_FIELD = {CHAT_COMPLETIONS: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input"}
_ENVELOPE_KEYS = frozenset({"custom_id", "method", "url", "body"})


class LineError(ValueError):
    def __init__(self, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.custom_id = custom_id


def normalize_request(
    line: Any, endpoint: str = CHAT_COMPLETIONS, defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Returns {"custom_id", "url", "body"} for a parsed line, or raises LineError."""
    if not isinstance(line, dict):
        raise LineError(f"expected a JSON object, got {type(line).__name__}")
    custom_id = line.get("custom_id")
    if custom_id is None:
        raise LineError("missing 'custom_id'")
    if not isinstance(custom_id, str) or not custom_id.strip():
        raise LineError("'custom_id' must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID_LENGTH:
        raise LineError(f"'custom_id' is longer than {MAX_CUSTOM_ID_LENGTH} characters")
    method = line.get("method", "POST")
    if method != "POST":
        raise LineError(f"'method' must be POST, got {method!r}", custom_id)

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
    if url not in ENDPOINTS:
        raise LineError(f"unknown url {url!r}; expected one of {', '.join(ENDPOINTS)}", custom_id)

    merged = {**(defaults or {}), **body}
    required = _REQUIRED_FIELD[url]
    if required not in merged:
        raise LineError(f"body for {url} needs '{required}'", custom_id)
    if url == CHAT_COMPLETIONS and not isinstance(merged["messages"], list):
        raise LineError("'messages' must be a list of {role, content} objects", custom_id)
    # Results are collected whole; streaming makes no sense in a batch.
    merged.pop("stream", None)
    return {"custom_id": custom_id, "url": url, "body": merged}


def parse_line(raw: bytes, endpoint: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Parses one JSONL line; raises LineError."""
    if len(raw) > MAX_LINE_BYTES:
        raise LineError(f"line is {len(raw)} bytes; the limit is {MAX_LINE_BYTES}")
    try:
        parsed = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    return normalize_request(parsed, endpoint, defaults)
