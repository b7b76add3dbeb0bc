"""Every object key in the bucket, built (and, for shard results and files, parsed) here
only.

`batches/{id}/input.jsonl`, `shards/{n:06d}.jsonl`, `results/{n:06d}[.attemptK].jsonl`,
`invalid.jsonl`, `output.jsonl`, `errors.jsonl`, `summary.json`, `deleted.json` (what was
deleted, and when: the one object a deleted batch keeps), `retried_by/{retry id}.json` (one
per batch retrying it: the link back from an ended batch, whose memo cannot change);
`files/{file id}`;
`boxes/{BOX_NAME}.json`.

The OpenAI-compatible Files API sees some of these objects as files (`file_key_for_id`,
`file_id_for_key`): an uploaded file under its own id, and a batch's input, output and
error objects under ids made from the batch id, with nothing copied:

| file id                  | object                            |
|--------------------------|-----------------------------------|
| `file-<hex>`             | `files/file-<hex>`                |
| `file-<batch id>-input`  | `batches/<batch id>/input.jsonl`  |
| `file-<batch id>-output` | `batches/<batch id>/output.jsonl` |
| `file-<batch id>-errors` | `batches/<batch id>/errors.jsonl` |
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Literal

BATCHES_PREFIX = "batches/"


def batch_prefix(batch_id: str) -> str:
    return f"{BATCHES_PREFIX}{batch_id}"


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


def deleted_key(batch_id: str) -> str:
    """The record of a batch's deleted data (`DELETE /batch/{id}`, `DELETE /v1/files/{id}`
    of its files): the API answers 410 for what it names."""
    return f"{batch_prefix(batch_id)}/deleted.json"


def retry_links_prefix(batch_id: str) -> str:
    """Prefix of the links to the batches that retry `batch_id` (ends with '/')."""
    return f"{batch_prefix(batch_id)}/retried_by/"


def retry_link_key(batch_id: str, retry_id: str) -> str:
    """The link from batch `batch_id` to `retry_id`, a batch made of its failed or unfinished
    lines (`POST /batch/{id}/retry`): one small object per retry, written once."""
    return f"{retry_links_prefix(batch_id)}{retry_id}.json"


def parse_retry_link_key(batch_id: str, key: str) -> str | None:
    """The retry's batch id a link key names; None for any other key."""
    prefix = retry_links_prefix(batch_id)
    if not key.startswith(prefix) or not key.endswith(".json"):
        return None
    retry_id = key[len(prefix) : -len(".json")]
    return retry_id if _BATCH_ID.fullmatch(retry_id) else None


def batch_objects_prefix(batch_id: str) -> str:
    """Prefix of every object of a batch (ends with '/')."""
    return f"{batch_prefix(batch_id)}/"


def batch_id_of_file(file_id: str) -> str | None:
    """The batch whose input, output or error object a file id names; None for an uploaded
    file or an id that names nothing."""
    found = file_key_for_id(file_id)
    if found is None or found[1] is None:
        return None
    return found[0].removeprefix(BATCHES_PREFIX).partition("/")[0]


FILES_PREFIX = "files/"
# The ids the API makes (`batch_<hex>` from a uuid or an Idempotency-Key's digest,
# `file-<hex>` from a uuid): a file id naming anything else names no object.
_BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")
_UPLOADED_FILE_ID = re.compile(r"file-[0-9a-f]{32}")

BatchFileKind = Literal["input", "output", "errors"]
_BATCH_FILE_KEYS: dict[BatchFileKind, Callable[[str], str]] = {
    "input": input_key,
    "output": output_key,
    "errors": errors_key,
}


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def is_uploaded_file_id(file_id: str) -> bool:
    """An id `new_file_id` made (a file uploaded through the Files API)."""
    return _UPLOADED_FILE_ID.fullmatch(file_id) is not None


def file_key(file_id: str) -> str:
    """Where an uploaded file (OpenAI Files API) lives in the bucket."""
    return f"{FILES_PREFIX}{file_id}"


def batch_file_id(batch_id: str, kind: BatchFileKind) -> str:
    """The file id under which a batch's input, output or error object is visible."""
    return f"file-{batch_id}-{kind}"


def file_key_for_id(file_id: str) -> tuple[str, BatchFileKind | None] | None:
    """(object key, kind) a file id names: kind None for an uploaded file, else which of
    its batch's objects; None when the id names no object."""
    if is_uploaded_file_id(file_id):
        return file_key(file_id), None
    if not file_id.startswith("file-"):
        return None
    batch_id, _, name = file_id.removeprefix("file-").rpartition("-")
    if not _BATCH_ID.fullmatch(batch_id):
        return None
    for kind, build in _BATCH_FILE_KEYS.items():
        if name == kind:
            return build(batch_id), kind
    return None


def file_id_for_key(key: str) -> str | None:
    """The file id under which an object is visible, when it is one."""
    if key.startswith(FILES_PREFIX):
        file_id = key.removeprefix(FILES_PREFIX)
        return file_id if is_uploaded_file_id(file_id) else None
    if not key.startswith(BATCHES_PREFIX):
        return None
    batch_id = key.removeprefix(BATCHES_PREFIX).partition("/")[0]
    if not _BATCH_ID.fullmatch(batch_id):
        return None
    for kind, build in _BATCH_FILE_KEYS.items():
        if build(batch_id) == key:
            return batch_file_id(batch_id, kind)
    return None


BOXES_PREFIX = "boxes/"


def box_key(box: str) -> str:
    """The box record's key; a '/' in the box name would make a folder of it."""
    return f"{BOXES_PREFIX}{box.replace('/', '_')}.json"


def idempotent_id(prefix: str, idempotency_key: str) -> str:
    """The id (`batch_<hex>`, `proc_<hex>`) an Idempotency-Key stands for: a retry gets the
    same one, so a client can look its batch up before sending the input again."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}_{digest[:32]}"
