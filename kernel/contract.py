"""The batch status: its states, the completion window, the stored model and the rates and
cost read from it. Object keys live in `kernel.keys`, workflow and activity inputs in
`kernel.inputs`, request endpoints in `kernel.endpoints`, box records in `kernel.boxes`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from kernel.endpoints import CHAT_COMPLETIONS

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
