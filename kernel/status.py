"""The stored batch status: what the batch workflow publishes in its memo (one key per
field) and the API reads back. Plain data only: nothing here reads the wall clock, so a
workflow may build and copy it freely. Rates and cost are worked out when the status is
read, with an explicit `now` (`kernel.view`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kernel.endpoints import CHAT_COMPLETIONS
from kernel.lifecycle import BatchState, EndReason, is_final


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


class BoxCost(BaseModel):
    """What one box the batch used cost: its finished shards' GPU time and its price."""

    gpu_seconds: float = Field(
        default=0.0, description="Wall time the box's finished shards held its slots."
    )
    price_per_hour: float | None = Field(
        default=None,
        description="USD per hour: the box's own price (BOX_PRICE_PER_HOUR) when its shards "
        "ran, else the batch's gpu_price_per_hour; null when neither is known.",
    )
    cost_usd: float | None = Field(
        default=None,
        description="price_per_hour times gpu_seconds (capped at the batch's elapsed time), "
        "worked out when the batch is read; null without a price.",
    )


# Budget stops published before `end_reason` existed say so only in their message.
_BUDGET_MESSAGE = "budget reached"


class BatchStatus(BaseModel):
    """A batch as the workflow publishes it: the OpenAI batch object's fields plus the
    object keys of its files, its cost inputs and why it ended."""

    model_config = ConfigDict(extra="ignore")

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str = CHAT_COMPLETIONS
    status: BatchState = "validating"
    end_reason: EndReason | None = Field(
        default=None,
        description="Why the batch ended (null while it runs): completed, failed, cancelled, "
        "expired, or budget (ended 'cancelled' by its max_cost_usd).",
    )
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
    box_costs: dict[str, BoxCost] = Field(
        default_factory=dict,
        description="Per box (BOX_NAME): GPU seconds, price per hour and cost; the batch's "
        "cost_usd is their sum.",
    )
    gpu_price_per_hour: float | None = Field(
        default=None,
        description="Box price (USD per hour) for the boxes that publish none of their own.",
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
    retry_of: str | None = Field(
        default=None,
        description="The batch this one retries (POST /batch/{id}/retry): its failed and/or "
        "unfinished lines.",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_error(cls, data: Any) -> Any:
        """Batches started before the status model published a plain `error` string."""
        if isinstance(data, dict) and isinstance(data.get("error"), str) and not data.get("errors"):
            return {**data, "errors": {"message": data["error"]}}
        return data

    @model_validator(mode="after")
    def _legacy_end_reason(self) -> BatchStatus:
        """Batches that ended before `end_reason` was published: the final state says it,
        and a budget stop said so in its message."""
        if self.end_reason is None and is_final(self.status):
            budget = (
                self.status == "cancelled"
                and self.errors is not None
                and self.errors.message.startswith(_BUDGET_MESSAGE)
            )
            self.end_reason = "budget" if budget else self.status  # type: ignore[assignment]
        return self

    def memo(self, *fields: str) -> dict[str, Any]:
        """The memo entries of `fields` (all when none are named), JSON-ready."""
        if fields:
            return self.model_dump(mode="json", include=set(fields))
        return self.model_dump(mode="json")
