"""Every object key in the bucket, built (and, for shard results, parsed) here only.

`batches/{id}/input.jsonl`, `shards/{n:06d}.jsonl`, `results/{n:06d}[.attemptK].jsonl`,
`invalid.jsonl`, `output.jsonl`, `errors.jsonl`, `summary.json`; `files/{file id}`;
`boxes/{BOX_NAME}.json`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def batch_prefix(batch_id: str) -> str:
    return f"batches/{batch_id}"


def input_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/input.jsonl"


def shard_key(batch_id: str, shard: int) -> str:
    return f"{batch_prefix(batch_id)}/shards/{shard:06d}.jsonl"


def result_key(batch_id: str, shard: int, attempt: int = 1) -> str:
    """Where an attempt of a shard writes its result lines: `{n:06d}.jsonl` for the first,
    `{n:06d}.attempt{k}.jsonl` for a later one. The latest attempt's object is the shard's
    result (`latest_results`): an earlier attempt still running on a box that was cut off
    and writes late cannot replace it."""
    if attempt <= 1:
        return f"{shard_results_prefix(batch_id, shard)}jsonl"
    return f"{shard_results_prefix(batch_id, shard)}attempt{attempt}.jsonl"


def results_prefix(batch_id: str) -> str:
    """Prefix of every shard result object of a batch (ends with '/')."""
    return f"{batch_prefix(batch_id)}/results/"


def shard_results_prefix(batch_id: str, shard: int) -> str:
    """Prefix of every result object of one shard, whatever its attempt."""
    return f"{results_prefix(batch_id)}{shard:06d}."


_RESULT_NAME = re.compile(r"^(?P<shard>\d{6,})\.(?:attempt(?P<attempt>[1-9]\d*)\.)?jsonl$")


def parse_result_key(batch_id: str, key: str) -> tuple[int, int] | None:
    """(shard, attempt) of a result object's key; None for any other key."""
    prefix = results_prefix(batch_id)
    if not key.startswith(prefix):
        return None
    match = _RESULT_NAME.match(key[len(prefix) :])
    if match is None:
        return None
    return int(match["shard"]), int(match["attempt"] or 1)


def latest_results(batch_id: str, keys: Iterable[str]) -> dict[int, tuple[int, str]]:
    """Shard → (attempt, key) of its latest attempt's result object, among `keys`."""
    latest: dict[int, tuple[int, str]] = {}
    for key in keys:
        parsed = parse_result_key(batch_id, key)
        if parsed is None:
            continue
        shard, attempt = parsed
        if shard not in latest or attempt > latest[shard][0]:
            latest[shard] = (attempt, key)
    return latest


def invalid_lines_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/invalid.jsonl"


def output_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/output.jsonl"


def errors_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/errors.jsonl"


def summary_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/summary.json"


FILES_PREFIX = "files/"


def file_key(file_id: str) -> str:
    """Where an uploaded file (OpenAI Files API) lives in the bucket."""
    return f"{FILES_PREFIX}{file_id}"


BOXES_PREFIX = "boxes/"


def box_key(box: str) -> str:
    """The box record's key; a '/' in the box name would make a folder of it."""
    return f"{BOXES_PREFIX}{box.replace('/', '_')}.json"
