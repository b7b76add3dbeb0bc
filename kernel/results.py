"""Reading a batch's finished results: the invalid input lines, then each shard's result
object in shard order. The API streams them while a batch runs; the merge activity writes
them into the output and error files. One reader serves both.

A shard's result is the object of its latest attempt (see `result_key`): one listing of the
batch's results finds them. Every object of a shard holds distinct request lines of that
shard (a finished attempt all of them, a shard handed over or cancelled those answered so
far), so whichever one is read, each custom_id comes once.

When a batch ends before every request ran (a cancel, its budget, its completion window),
the merge accounts for the rest: each request line of a shard that has no answer becomes an
error line whose code says why (`UNFINISHED_ERRORS`), as OpenAI's error file does, so the
output and error files together hold every input line's custom_id exactly once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, get_args

from minio import Minio

from kernel.keys import invalid_lines_key, latest_results, results_prefix
from kernel.lifecycle import EndReason
from kernel.storage import list_objects, read_lines

# The error of a request that never ran, by the reason its batch ended. OpenAI's codes for a
# cancel and an expiry; OpenAI has no budget, so that code is this project's. A batch that
# completed ran every request, so it has none.
UNFINISHED_ERRORS: dict[str, tuple[str, str]] = {
    "cancelled": (
        "batch_cancelled",
        "This request was not executed because the batch was cancelled.",
    ),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
    "budget": (
        "batch_budget_exceeded",
        "This request was not executed because the batch reached its max_cost_usd.",
    ),
    "failed": (
        "batch_failed",
        "This request was not executed because the batch failed.",
    ),
}
assert set(UNFINISHED_ERRORS) == set(get_args(EndReason)) - {"completed"}
# The reason a final status stands for, for a merge that was not told (an activity scheduled
# by a workflow recorded before MergeInput carried `end_reason`).
_REASON_OF_STATUS: dict[str, str] = {
    "cancelled": "cancelled",
    "expired": "expired",
    "failed": "failed",
}


def unfinished_error(end_reason: str, status: str) -> tuple[str, str] | None:
    """(code, message) of the error lines for requests that never ran in a batch that ended
    for `end_reason` (or, when that is empty, in final `status`); None when it ran them all."""
    reason = end_reason or _REASON_OF_STATUS.get(status, "completed")
    return UNFINISHED_ERRORS.get(reason)


def unfinished_line(line_no: int, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    """The error-file line of a request that never ran (shaped as an invalid line's)."""
    return {
        "id": None,
        "custom_id": custom_id,
        "line": line_no,
        "response": None,
        "error": {"code": code, "message": message},
    }


def is_success(line: bytes) -> bool:
    """An output line answered without error (as opposed to an error-file line)."""
    return json.loads(line).get("error") is None


class ShardResults:
    """The result lines of one batch, read from the bucket as they are stored."""

    def __init__(self, s3: Minio, bucket: str, batch_id: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.batch_id = batch_id

    def lines(
        self, shard_count: int, on_shard: Callable[[int], None] | None = None
    ) -> Iterator[tuple[bool, bytes]]:
        """(is_success, line) for the invalid input lines, then every finished shard's
        lines in shard order; shards without a result object yet are skipped."""
        for line in read_lines(
            self.s3, self.bucket, invalid_lines_key(self.batch_id), missing_ok=True
        ):
            yield False, line
        keys = self.result_keys() if shard_count else {}
        for shard in range(shard_count):
            if shard in keys:
                for line in read_lines(self.s3, self.bucket, keys[shard], missing_ok=True):
                    yield is_success(line), line
            if on_shard is not None:
                on_shard(shard)

    def result_keys(self) -> dict[int, str]:
        """Shard → key of its latest attempt's result object, for the shards that have one."""
        listing = list_objects(self.s3, self.bucket, results_prefix(self.batch_id))
        names = (item.object_name or "" for item in listing)
        return {shard: key for shard, (_, key) in latest_results(self.batch_id, names).items()}
