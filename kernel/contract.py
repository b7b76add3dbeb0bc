"""The batch contract: object keys, the batch status model, and the inputs and results of
every workflow and activity (one dataclass each).

Imported by the API and the workers: no side effects on import. Bulk data never travels
through these: they carry object keys and counts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS)

BATCH_WORKFLOW = "BatchWorkflow"
PROCESS_WORKFLOW = "ProcessWorkflow"

DEFAULT_SHARD_SIZE = 500
DEFAULT_WINDOW = 4
MAX_LINE_BYTES = 1_000_000
# A shard also ends at this many bytes, whatever its shard_size, so that a GPU worker that
# holds one shard in memory never holds more than this.
MAX_SHARD_BYTES = 32 << 20


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


# A batch's completion window: OpenAI's "24h", or any "<N>s", "<N>m", "<N>h" (short ones
# make expiry testable). Expiry is measured from the batch's creation.
DEFAULT_COMPLETION_WINDOW = "24h"
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600}
MAX_COMPLETION_WINDOW_S = 30 * 24 * 3600


def completion_window_seconds(window: str) -> int:
    """Seconds in a completion window such as "24h" or "90s"; ValueError when malformed."""
    text = window.strip()
    unit = text[-1:]
    if unit not in _WINDOW_UNITS or not text[:-1].isdigit():
        raise ValueError(
            f"completion_window {window!r} must be a number followed by s, m or h (e.g. '24h')"
        )
    seconds = int(text[:-1]) * _WINDOW_UNITS[unit]
    if not 1 <= seconds <= MAX_COMPLETION_WINDOW_S:
        raise ValueError(f"completion_window {window!r} must be between 1s and 720h")
    return seconds


BatchState = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
    "expired",
]
TERMINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled", "expired"})


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchErrors(BaseModel):
    message: str


class Usage(BaseModel):
    """Tokens summed over the answered requests' `usage` (OpenAI's batch `usage` names)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


def batch_cost_usd(
    price_per_hour: float | None, gpu_seconds: float, elapsed_s: float, box_count: int
) -> float | None:
    """What a batch cost so far: the box price per hour times the box time it held.

    The box time is the finished shards' slot time (`gpu_seconds`), capped at the batch's
    wall time on each box that answered: several shards share one box's slots at once, so
    their slot times overlap. None when no price is known.
    """
    if not price_per_hour:
        return None
    box_seconds = gpu_seconds
    if elapsed_s > 0 and box_count > 0:
        box_seconds = min(gpu_seconds, elapsed_s * box_count)
    return price_per_hour * box_seconds / 3600


class BatchStatus(BaseModel):
    """A batch as the workflow publishes it (its memo, one key per field) and as the API
    returns it: the OpenAI batch object's fields plus the object keys of its files."""

    model_config = ConfigDict(extra="ignore")

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str = CHAT_COMPLETIONS
    status: BatchState = "validating"
    input_key: str | None = None
    output_key: str | None = None
    error_key: str | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    errors: BatchErrors | None = None
    first_error: str | None = Field(
        default=None, description="The first invalid input line's problem, if any."
    )
    shard_count: int = 0
    usage: Usage = Field(default_factory=Usage)
    gpu_seconds: float = Field(
        default=0.0, description="Wall time the finished shards held llama-server's slots."
    )
    boxes: dict[str, int] = Field(
        default_factory=dict, description="Requests answered per box (BOX_NAME)."
    )
    gpu_price_per_hour: float | None = Field(
        default=None, description="Box price (USD per hour) the cost is computed with."
    )
    max_cost_usd: float | None = Field(
        default=None, description="Budget: the batch stops as a cancel does past this cost."
    )
    created_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    completion_window: str | None = Field(
        default=None, description="How long the batch may run, e.g. '24h'; null: no limit."
    )
    expires_at: int | None = None
    expired_at: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_error(cls, data: Any) -> Any:
        """Batches started before the status model published a plain `error` string."""
        if isinstance(data, dict) and isinstance(data.get("error"), str) and not data.get("errors"):
            return {**data, "errors": {"message": data["error"]}}
        return data

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATES

    def memo(self, *fields: str) -> dict[str, Any]:
        """The memo entries of `fields` (all when none are named), JSON-ready. Computed
        fields (rates, cost) are never stored: they are worked out when read."""
        computed = set(type(self).model_computed_fields)
        if fields:
            return self.model_dump(mode="json", include=set(fields) - computed)
        return self.model_dump(mode="json", exclude=computed)

    # Rates and cost, computed when the status is read (never inside a workflow) ----------

    def _ended_at(self) -> int | None:
        if self.status in ("completed", "cancelled", "failed"):
            return self.completed_at or self.cancelled_at or self.failed_at or self.finalizing_at
        if self.status in ("finalizing", "cancelling"):
            return self.finalizing_at or self.cancelling_at
        return None

    def _rate_seconds(self) -> float | None:
        """The elapsed time rates divide by: timestamps are whole seconds, so a batch done
        within one counts as one second."""
        elapsed = self.elapsed_seconds
        return None if elapsed is None else max(1.0, elapsed)

    @computed_field(  # type: ignore[prop-decorator]
        description="Seconds since the first shard could start (to the end once finished)."
    )
    @property
    def elapsed_seconds(self) -> float | None:
        if self.in_progress_at is None:
            return None
        end = self._ended_at() or time.time()
        return round(max(0.0, end - self.in_progress_at), 3)

    @computed_field(  # type: ignore[prop-decorator]
        description="Requests answered (or failed) per second so far."
    )
    @property
    def requests_per_second(self) -> float | None:
        elapsed = self._rate_seconds()
        if elapsed is None:
            return None
        counts = self.request_counts
        return round((counts.completed + counts.failed) / elapsed, 3)

    @computed_field(  # type: ignore[prop-decorator]
        description="Tokens (prompt plus completion, from the responses' usage) per second."
    )
    @property
    def tokens_per_second(self) -> float | None:
        elapsed = self._rate_seconds()
        if elapsed is None:
            return None
        return round(self.usage.total_tokens / elapsed, 3)

    @computed_field(  # type: ignore[prop-decorator]
        description="Completion tokens per second."
    )
    @property
    def output_tokens_per_second(self) -> float | None:
        elapsed = self._rate_seconds()
        if elapsed is None:
            return None
        return round(self.usage.output_tokens / elapsed, 3)

    @computed_field(  # type: ignore[prop-decorator]
        description="Seconds left at the current rate (0 once finished; null before a rate)."
    )
    @property
    def seconds_left(self) -> float | None:
        if self.is_terminal:
            return 0.0
        rate = self.requests_per_second
        if not rate:
            return None
        counts = self.request_counts
        left = max(0, counts.total - counts.completed - counts.failed)
        return round(left / rate, 1)

    @computed_field(  # type: ignore[prop-decorator]
        description="USD so far: gpu_price_per_hour times the box time the batch held."
    )
    @property
    def cost_usd(self) -> float | None:
        cost = batch_cost_usd(
            self.gpu_price_per_hour,
            self.gpu_seconds,
            self.elapsed_seconds or 0.0,
            len(self.boxes),
        )
        return None if cost is None else round(cost, 6)

    @computed_field(  # type: ignore[prop-decorator]
        description="USD per million completion tokens so far."
    )
    @property
    def usd_per_million_output_tokens(self) -> float | None:
        cost = self.cost_usd
        if cost is None or not self.usage.output_tokens:
            return None
        return round(cost * 1_000_000 / self.usage.output_tokens, 4)


@dataclass
class BatchProgress:
    """What the workflow has learnt so far; carried across continue-as-new."""

    total: int = 0
    invalid: int = 0
    shard_count: int = 0
    next_shard: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    gpu_seconds: float = 0.0
    boxes: dict[str, int] = field(default_factory=dict)

    def add(self, shard: ShardResult) -> None:
        self.completed += shard.completed
        self.failed += shard.failed
        self.input_tokens += shard.input_tokens
        self.output_tokens += shard.output_tokens
        self.gpu_seconds += shard.gpu_seconds
        if shard.box:
            self.boxes[shard.box] = self.boxes.get(shard.box, 0) + shard.completed + shard.failed

    @property
    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.input_tokens + self.output_tokens,
        )


@dataclass
class BatchInput:
    batch_id: str
    bucket: str
    input_key: str
    endpoint: str = CHAT_COMPLETIONS
    defaults: dict[str, Any] = field(default_factory=dict)
    shard_size: int = DEFAULT_SHARD_SIZE
    window: int = DEFAULT_WINDOW
    gpu_task_queue: str = "llm-batch-gpu"
    created_at: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    # Cost: the box price per hour and the budget; the batch stops as a cancel does (keeping
    # its results) once its cost passes max_cost_usd.
    gpu_price_per_hour: float = 0.0
    max_cost_usd: float | None = None
    # Unix time after which unfinished shards stop and the batch ends "expired" (0: never).
    expires_at: int = 0
    # A run continues as new past this many history events (or when the server suggests).
    max_history_events: int = 8_000
    progress: BatchProgress | None = None
    # Shards in flight follow the live GPU capacity (box records), `window` being the floor.
    follow_capacity: bool = False


@dataclass
class BatchResult:
    batch_id: str
    status: str
    total: int
    completed: int
    failed: int
    output_key: str
    error_key: str


@dataclass
class SplitInput:
    batch_id: str
    bucket: str
    input_key: str
    endpoint: str
    defaults: dict[str, Any]
    shard_size: int


@dataclass
class SplitResult:
    total: int
    valid: int
    invalid: int
    shard_count: int
    first_error: str = ""


@dataclass
class ShardInput:
    batch_id: str
    bucket: str
    shard: int


@dataclass
class ShardResult:
    shard: int
    completed: int
    failed: int
    input_tokens: int = 0
    output_tokens: int = 0
    gpu_seconds: float = 0.0
    box: str = ""


@dataclass
class MergeInput:
    batch_id: str
    bucket: str
    shard_count: int
    status: str
    total: int
    created_at: int


@dataclass
class MergeResult:
    completed: int
    failed: int
    output_key: str
    error_key: str


@dataclass
class ProcessInput:
    request_id: str
    request: dict[str, Any]
    gpu_task_queue: str = "llm-batch-gpu"


@dataclass
class ProcessResult:
    output: dict[str, Any]


# The fleet: each GPU worker publishes its box record every BOX_REPORT_SECONDS; a record
# whose object is older than BOX_LIVE_SECONDS is a box that is gone.
BOXES_PREFIX = "boxes/"
BOX_REPORT_SECONDS = 5.0
BOX_LIVE_SECONDS = 20.0


def box_key(box: str) -> str:
    """The box record's key; a '/' in the box name would make a folder of it."""
    return f"{BOXES_PREFIX}{box.replace('/', '_')}.json"


class BoxRecord(BaseModel):
    """What one GPU worker says about its box (written by the worker, read by the API and
    the capacity activity)."""

    model_config = ConfigDict(extra="ignore")

    box: str
    task_queue: str = ""
    slots: int = Field(default=0, description="llama-server's total_slots; 0 while it is down.")
    shard_room: int = Field(default=0, description="Shard activities the worker runs at once.")
    in_flight: int = Field(default=0, description="Requests sent to llama-server, not answered.")
    requests_per_s: float = 0.0
    tokens_per_s: float = Field(default=0.0, description="Generated (completion) tokens/s.")
    requests_total: int = 0
    last_seen: float = Field(default=0.0, description="Unix time the record was written.")
    live: bool = Field(default=True, description="Written within the last BOX_LIVE_SECONDS.")

    def shards_wanted(self, shard_size: int) -> int:
        """Shards that keep this box's slots busy: enough to fill them, plus one whose
        requests take over the slots of a shard that is finishing; never more than the
        worker runs at once. A box whose llama-server is down wants none."""
        if self.slots <= 0 or not self.live:
            return 0
        wanted = -(-self.slots // max(shard_size, 1)) + 1
        return min(wanted, self.shard_room) if self.shard_room > 0 else wanted


@dataclass
class CapacityInput:
    bucket: str
    gpu_task_queue: str
    shard_size: int


@dataclass
class CapacityResult:
    shards: int = 0
    boxes: int = 0
    slots: int = 0
