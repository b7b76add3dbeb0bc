"""Retrying an ended batch (`POST /batch/{id}/retry`) and reading a chain of retries as one.

Selection: which of a batch's input lines a retry sends again, read from what the batch
stored, never from its error file.

- *failed*: a request that ran and failed (an error line in its shard's result: llama-server
  refused or failed it);
- *unfinished*: a request that never ran because its batch was cancelled, expired or
  stopped by its budget (the merge wrote it as `batch_cancelled`, `batch_expired` or
  `batch_budget_exceeded`);
- never resent: an invalid input line (`invalid_request_line`): it would fail the same way.

Per shard, the shard's request lines (`shards/{n}.jsonl`) are read against its latest result
object, as the merge does: memory is one shard's custom_ids. A batch that ended before its
input was split (cancelled while `validating`) has no shards: its input object is read and
each line that parses is unfinished.

Merge: the output (or error) lines of every batch of a chain, newest batch first, each
custom_id once. Memory: one 12-byte digest (about 100 bytes in a Python set) per distinct
custom_id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kernel.jsonl import TooLong
from kernel.lines import LineError, parse_line
from kernel.results import UNFINISHED_ERRORS

# The end reasons whose unrun requests a retry may send again, and their error codes.
RETRYABLE_ENDINGS = ("cancelled", "expired", "budget")
UNFINISHED_CODES = frozenset(UNFINISHED_ERRORS[reason][0] for reason in RETRYABLE_ENDINGS)
INVALID_CODE = "invalid_request_line"
LEFT_OUT_REASON = "invalid input lines (invalid_request_line) would fail the same way again"


@dataclass
class RetryCounts:
    """What a retry sends and what it leaves out."""

    failed: int = 0
    unfinished: int = 0
    # Lines not sent, by why: "invalid_request_line", "failed" or "unfinished" (not asked).
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def selected(self) -> int:
        return self.failed + self.unfinished

    def leave_out(self, reason: str, count: int = 1) -> None:
        if count:
            self.left_out[reason] = self.left_out.get(reason, 0) + count


def request_of(shard_line: dict[str, Any]) -> dict[str, Any]:
    """The request a shard line holds (the split adds its input line number)."""
    return {key: value for key, value in shard_line.items() if key != "line"}


def select_shard(
    requests: Iterable[bytes],
    results: Iterable[bytes],
    *,
    ran_all: bool,
    failed: bool,
    unfinished: bool,
    counts: RetryCounts,
) -> Iterator[dict[str, Any]]:
    """The requests of one shard to send again. `requests`: the shard's lines; `results`: its
    latest result object's lines (none when it never started); `ran_all`: False when the
    batch ended before running every request (cancel, expiry, budget), so that a request
    without an answer is unfinished. Counts what it selects and leaves out in `counts`."""
    answered: set[str] = set()
    failures: set[str] = set()
    for line in results:
        record = json.loads(line)
        custom_id = record.get("custom_id")
        answered.add(custom_id)
        if record.get("error") is not None:
            failures.add(custom_id)
    for line in requests:
        request = json.loads(line)
        custom_id = request["custom_id"]
        if custom_id in failures:
            kind = "failed"
        elif custom_id in answered or ran_all:
            continue
        else:
            kind = "unfinished"
        if not (failed if kind == "failed" else unfinished):
            counts.leave_out(kind)
            continue
        if kind == "failed":
            counts.failed += 1
        else:
            counts.unfinished += 1
        yield request_of(request)


def select_unsplit(
    lines: Iterable[bytes | TooLong],
    endpoint: str,
    defaults: dict[str, Any],
    *,
    unfinished: bool,
    counts: RetryCounts,
) -> Iterator[dict[str, Any]]:
    """The requests to send again from the input of a batch that ended before it was split:
    every line that parses is unfinished; one that does not is invalid input, left out."""
    for raw in lines:
        if isinstance(raw, bytes) and not raw.strip():
            continue
        if isinstance(raw, TooLong):
            counts.leave_out(INVALID_CODE)
            continue
        try:
            request = parse_line(raw, endpoint, defaults)
        except LineError:
            counts.leave_out(INVALID_CODE)
            continue
        if not unfinished:
            counts.leave_out("unfinished")
            continue
        counts.unfinished += 1
        yield request


def _digest(custom_id: str) -> bytes:
    return hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=12).digest()


def _custom_id(line: bytes) -> str | None:
    try:
        value = json.loads(line).get("custom_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


LineSource = Callable[[], Iterable[bytes]]


def _first_per_id(sources: Iterable[LineSource], seen: set[bytes]) -> Iterator[bytes]:
    """Each line whose custom_id is not in `seen` yet (adding it), and every line without
    one (an unreadable input line), as the sources give them."""
    for source in sources:
        for line in source():
            custom_id = _custom_id(line)
            if custom_id is not None:
                key = _digest(custom_id)
                if key in seen:
                    continue
                seen.add(key)
            yield line + b"\n"


def merged_results(outputs: Iterable[LineSource]) -> Iterator[bytes]:
    """One output line per custom_id across a chain: `outputs` are the batches' output
    lines, newest batch first (each opened only when reached); the newest answer wins."""
    yield from _first_per_id(outputs, set())


def merged_errors(outputs: Iterable[LineSource], errors: Iterable[LineSource]) -> Iterator[bytes]:
    """One error line per custom_id that no batch of the chain answered, the newest batch's
    error winning; lines without a custom_id (an unreadable input line) all come through.
    The outputs are read first, for the answered custom_ids."""
    answered: set[bytes] = set()
    for _ in _first_per_id(outputs, answered):
        pass
    yield from _first_per_id(errors, answered)


def chain_order(batches: Iterable[tuple[str, int | None]]) -> list[str]:
    """Batch ids of a chain, newest first (by creation time, then id): a retry is created
    after the batch it retries, so its answers are the later ones."""
    return [bid for bid, _ in sorted(batches, key=lambda b: (b[1] or 0, b[0]), reverse=True)]
