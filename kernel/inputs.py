"""The input and result of every workflow and activity: one dataclass each.

Bulk data never travels through these: they carry object keys and counts. Moving a class
between modules changes nothing in a recorded history (payloads are the fields as JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernel.endpoints import CHAT_COMPLETIONS
from kernel.status import BoxCost, Usage

BATCH_WORKFLOW = "BatchWorkflow"
PROCESS_WORKFLOW = "ProcessWorkflow"

DEFAULT_SHARD_SIZE = 500
DEFAULT_WINDOW = 4
# A shard also ends at this many bytes, whatever its shard_size, so that a GPU worker that
# holds one shard in memory never holds more than this.
MAX_SHARD_BYTES = 32 << 20


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
    # Per box: the GPU seconds of its finished shards, and its own price per hour as its
    # shards reported it (boxes without one are absent: the batch's price stands for it).
    box_seconds: dict[str, float] = field(default_factory=dict)
    box_prices: dict[str, float] = field(default_factory=dict)

    def add(self, shard: ShardResult) -> None:
        self.completed += shard.completed
        self.failed += shard.failed
        self.input_tokens += shard.input_tokens
        self.output_tokens += shard.output_tokens
        self.gpu_seconds += shard.gpu_seconds
        if shard.box:
            self.boxes[shard.box] = self.boxes.get(shard.box, 0) + shard.completed + shard.failed
            seconds = self.box_seconds.get(shard.box, 0.0) + shard.gpu_seconds
            self.box_seconds[shard.box] = seconds
            if shard.price_per_hour > 0:
                self.box_prices[shard.box] = shard.price_per_hour

    def box_costs(self) -> dict[str, BoxCost]:
        """GPU seconds and own price per box (the cost is worked out when read)."""
        return {
            box: BoxCost(gpu_seconds=round(seconds, 3), price_per_hour=self.box_prices.get(box))
            for box, seconds in sorted(self.box_seconds.items())
        }

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
    # Cost: the price per hour of a box that reports none of its own, and the budget; the
    # batch stops as a cancel does (keeping its results) once its cost, summed over the
    # boxes at each one's price, passes max_cost_usd.
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
    # The box's own price (BOX_PRICE_PER_HOUR) when the shard ran: the box may be gone when
    # the batch's cost is read. 0: unknown (the batch's gpu_price_per_hour stands for it).
    price_per_hour: float = 0.0


@dataclass
class MergeInput:
    batch_id: str
    bucket: str
    shard_count: int
    status: str
    total: int
    created_at: int
    # Why the batch ended (kernel.lifecycle's EndReason): the code of the error lines for the
    # requests that never ran (kernel.results.UNFINISHED_ERRORS). Empty in histories recorded
    # before it existed: the final `status` stands for it then.
    end_reason: str = ""
    # Set when the batch ended before its input was split (cancelled while validating): the
    # input object, each of whose lines becomes an error line with the ending's code.
    unsplit_input_key: str = ""


@dataclass
class MergeResult:
    completed: int
    failed: int
    output_key: str
    error_key: str
    # The input lines counted by a merge of an unsplit input (0 otherwise: the split counted).
    total: int = 0


@dataclass
class ProcessInput:
    request_id: str
    request: dict[str, Any]
    gpu_task_queue: str = "llm-batch-gpu"


@dataclass
class ProcessResult:
    output: dict[str, Any]


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
