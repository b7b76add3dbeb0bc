"""Bodies of the OpenAI-compatible routes under /v1, shaped like the `openai` client's models
(`openai.types.FileObject`, `Batch`, `Model`...), so the official client parses them as is."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import Metadata
from kernel.lifecycle import BatchState

# Files --------------------------------------------------------------------------------------


class OpenAIFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class OpenAIFileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIFile]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class OpenAIFileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# Batches ------------------------------------------------------------------------------------


class OpenAIBatchCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "input_file_id": "file-6f1c0d9a4e0b4f5f9a6f2d1e8c7b3a21",
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                    "metadata": {"project": "demo"},
                }
            ]
        },
    )

    input_file_id: str = Field(min_length=1, description="A file uploaded with purpose 'batch'.")
    endpoint: str = Field(
        description="/v1/chat/completions, /v1/completions or /v1/embeddings (the other "
        "endpoints OpenAI batches accept are not served by llama-server)."
    )
    completion_window: str = Field(
        default="24h",
        description="'24h' as at OpenAI, or any '<N>s', '<N>m', '<N>h' (at most 720h). A "
        "batch not finished by then ends 'expired' with what finished in its output file.",
    )
    metadata: Metadata | None = None


class OpenAIBatchErrorItem(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class OpenAIBatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIBatchErrorItem]


class OpenAIRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class OpenAIBatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class OpenAIBatch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: OpenAIBatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchState
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: OpenAIRequestCounts
    usage: OpenAIBatchUsage
    metadata: dict[str, str] | None = None


class OpenAIBatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIBatch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# Inference ----------------------------------------------------------------------------------


class _OpenBody(BaseModel):
    """Every other field is passed to llama-server as given."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, description="Ignored: the box serves one model.")
    stream: bool | None = Field(
        default=None, description="Must be false or absent: answers are not streamed."
    )


class ChatCompletionCreate(_OpenBody):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}]
        },
    )

    messages: list[dict[str, Any]]


class CompletionCreate(_OpenBody):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"prompt": "Once upon a time", "max_tokens": 16}]},
    )

    prompt: Any


class EmbeddingCreate(_OpenBody):
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"input": "The food was delicious"}]}
    )

    input: Any


class _OpenAnswer(BaseModel):
    """llama-server's answer, passed on unchanged (fields beyond these included)."""

    model_config = ConfigDict(extra="allow")

    object: str
    model: str | None = None
    usage: dict[str, Any] | None = None


class ChatCompletion(_OpenAnswer):
    id: str
    created: int
    choices: list[dict[str, Any]]


class Completion(_OpenAnswer):
    id: str
    created: int
    choices: list[dict[str, Any]]


class EmbeddingList(_OpenAnswer):
    data: list[dict[str, Any]]


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]
