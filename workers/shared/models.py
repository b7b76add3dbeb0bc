"""Inputs and results of every workflow and activity (one dataclass each).

Imported by the API too: no side effects on import. Bulk data never travels through these:
they carry object keys and counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS)

BATCH_WORKFLOW = "BatchWorkflow"
PROCESS_WORKFLOW = "ProcessWorkflow"

DEFAULT_SHARD_SIZE = 500
DEFAULT_WINDOW = 4
MAX_LINE_BYTES = 1_000_000


def batch_prefix(batch_id: str) -> str:
    return f"batches/{batch_id}"


def input_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/input.jsonl"


def shard_key(batch_id: str, shard: int) -> str:
    return f"{batch_prefix(batch_id)}/shards/{shard:06d}.jsonl"


def result_key(batch_id: str, shard: int) -> str:
    return f"{batch_prefix(batch_id)}/results/{shard:06d}.jsonl"


def invalid_lines_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/invalid.jsonl"


def output_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/output.jsonl"


def errors_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/errors.jsonl"


def summary_key(batch_id: str) -> str:
    return f"{batch_prefix(batch_id)}/summary.json"


@dataclass
class BatchProgress:
    """What the workflow has learnt so far; carried across continue-as-new."""

    total: int = 0
    invalid: int = 0
    shard_count: int = 0
    next_shard: int = 0
    completed: int = 0
    failed: int = 0


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
    # A run continues as new past this many history events (or when the server suggests).
    max_history_events: int = 8_000
    progress: BatchProgress | None = None


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
