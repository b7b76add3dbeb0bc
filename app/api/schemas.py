"""Request and response bodies of the API, with the examples the OpenAPI docs show."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from kernel.endpoints import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS
from kernel.supervisor import StartOutcome
from kernel.view import BatchView

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
assert set(Endpoint.__args__) == {CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS}  # type: ignore[attr-defined]

# OpenAI's limits on a batch's metadata.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """At most 16 pairs, keys of at most 64 characters, values of at most 512 (OpenAI's)."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ValueError(f"has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed")
    for key, value in metadata.items():
        if not key:
            raise ValueError("keys must not be empty")
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(
                f"key {key[:20]!r}... is {len(key)} characters; at most {MAX_METADATA_KEY}"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise ValueError(
                f"value of {key!r} is {len(value)} characters; at most {MAX_METADATA_VALUE}"
            )
    return metadata


Metadata = Annotated[
    dict[str, str],
    AfterValidator(check_metadata),
    Field(
        description=f"Up to {MAX_METADATA_PAIRS} string pairs: keys of at most "
        f"{MAX_METADATA_KEY} characters, values of at most {MAX_METADATA_VALUE}."
    ),
]


class BatchCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "custom_id": "q1",
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": {"messages": [{"role": "user", "content": "Say hi"}]},
                        },
                        {"custom_id": "q2", "messages": [{"role": "user", "content": "2+2?"}]},
                    ],
                    "defaults": {"max_tokens": 32, "temperature": 0},
                    "metadata": {"project": "demo"},
                },
                {"input_key": "uploads/prompts.jsonl", "endpoint": "/v1/chat/completions"},
            ]
        },
    )

    items: list[Any] | None = Field(
        default=None,
        description="Request lines inline (OpenAI batch lines or the `messages`/`prompt` "
        "shorthands); each invalid one goes to the error file, the rest run.",
    )
    input_key: str | None = Field(
        default=None,
        min_length=1,
        description="Key of a JSONL object in the bucket (any size; streamed).",
    )
    endpoint: Endpoint = Field(
        default="/v1/chat/completions", description="Default `url` for lines without one."
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Merged into every request body (the line wins)."
    )
    metadata: Metadata = Field(default_factory=dict)
    shard_size: int | None = Field(
        default=None, ge=1, le=100_000, description="Requests per shard (BATCH_SHARD_SIZE)."
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="Budget in USD: once the batch's cost (summed over the boxes it used, "
        "each box's price per hour times the box time it used there) would pass it, the "
        "batch stops as a cancel does, keeping its results.",
    )
    completion_window: str | None = Field(
        default=None,
        description="Optional time limit such as '24h', '30m' or '90s': the batch then ends "
        "'expired' with what finished in its output file. None: no limit.",
    )

    @model_validator(mode="after")
    def _one_input(self) -> BatchCreate:
        if (self.items is None) == (self.input_key is None):
            raise ValueError("give exactly one of 'items' or 'input_key'")
        if self.items is not None and not self.items:
            raise ValueError("'items' is empty")
        return self


class ProcessCreate(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "messages": [{"role": "user", "content": "Say hi"}],
                    "max_tokens": 16,
                    "timeout_s": 30,
                },
                {
                    "custom_id": "one",
                    "method": "POST",
                    "url": "/v1/completions",
                    "body": {"prompt": "Once upon a time", "max_tokens": 16},
                },
            ]
        },
    )

    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Wait this long for the answer (PROCESS_TIMEOUT_SECONDS), else 202.",
    )


# Responses -------------------------------------------------------------------------------

WorkersStarted = Annotated[
    dict[str, StartOutcome],
    Field(description="What asking supervisord to start each worker program did."),
]


class BatchCreated(BatchView):
    workers: WorkersStarted = Field(default_factory=dict)


class RetryCreate(BaseModel):
    """Which lines of the ended batch to send again (both when the body is left out)."""

    model_config = ConfigDict(extra="forbid")

    failed: bool = Field(
        default=True, description="Requests that ran and failed (llama-server refused them)."
    )
    unfinished: bool = Field(
        default=True,
        description="Requests that never ran: batch_cancelled, batch_expired, "
        "batch_budget_exceeded.",
    )


class RetrySelection(BaseModel):
    of: str = Field(description="The batch retried.")
    failed: int = Field(description="Failed lines sent again.")
    unfinished: int = Field(description="Unfinished lines sent again.")
    left_out: dict[str, int] = Field(
        default_factory=dict,
        description="Lines not sent, by why: invalid_request_line (they would fail the same "
        "way again), failed or unfinished (not asked for).",
    )
    left_out_reason: str | None = None


class BatchRetried(BatchCreated):
    retry: RetrySelection


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchView]
    first_id: str | None = None
    last_id: str | None = Field(default=None, description="Pass as `after` for the next page.")
    has_more: bool = False


class ProcessOutcome(BaseModel):
    id: str
    status: Literal["in_progress", "completed", "failed"]
    output: dict[str, Any] | None = Field(
        default=None, description="The OpenAI batch output line, once completed."
    )
    error: dict[str, Any] | None = Field(default=None, description="Why it failed.")
    workers: WorkersStarted | None = None


class Check(BaseModel):
    """One dependency's state; other fields (address, endpoint, slots...) vary by check."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "error"]
    message: str | None = None


class HealthReport(BaseModel):
    status: Literal["ok", "degraded"]
    mode: str | None = Field(default=None, description="Only with the API key (when one is set).")
    checks: dict[str, Check] | None = Field(
        default=None, description="Only with the API key (when one is set)."
    )


class Poller(BaseModel):
    identity: str
    last_access_time: str


class WorkerProgram(BaseModel):
    program: str
    state: str | None = Field(description="supervisord's state; null when it is unreachable")


class QueueReport(BaseModel):
    task_queue: str
    backlog: int
    live_pollers: int
    pollers: list[Poller]
    worker: WorkerProgram


class BoxReport(BaseModel):
    """One GPU box of the fleet, as its GPU worker last reported it."""

    box: str = Field(description="BOX_NAME of the box (its host name by default).")
    slots: int = Field(description="llama-server's slots; 0 while llama-server is down.")
    in_flight: int = Field(description="Requests sent to llama-server and not yet answered.")
    requests_per_s: float
    tokens_per_s: float = Field(description="Generated tokens per second.")
    requests_total: int = Field(description="Requests answered since the worker started.")
    price_per_hour: float = Field(
        default=0.0, description="USD per hour it is rented at (0: unknown)."
    )
    shard_room: int = Field(description="Shards the box's worker runs at once.")
    last_seen: str = Field(description="When the record was last written (ISO 8601, UTC).")
    seconds_ago: float
    live: bool = Field(description="Reported within the last BOX_LIVE_SECONDS (20 s).")


class QueuesReport(BaseModel):
    queues: dict[str, QueueReport]
    supervisor_reachable: bool
    boxes: list[BoxReport] = Field(
        default_factory=list, description="GPU boxes that reported on the GPU queue, by name."
    )
    boxes_error: str | None = Field(
        default=None, description="Why the box records could not be read (S3 down)."
    )


class BatchDeleted(BaseModel):
    """`DELETE /batch/{id}`: what was removed, and the input kept (not the batch's own)."""

    id: str
    object: str = "batch.deleted"
    deleted: bool = True
    objects_removed: int
    bytes_removed: int
    input_kept: str | None = Field(
        None, description="an input object the batch did not stage (kept: the user's)"
    )
    input_file_kept: str | None = Field(None, description="its file id, when it is a file")
