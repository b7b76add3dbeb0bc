"""OpenAI Batch API: `/v1/batches`, the same batches `/batch` runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import IdempotencyKey, OpenAIDep, WorkersDep
from app.api.openai_schemas import OpenAIBatch, OpenAIBatchCreate, OpenAIBatchList
from app.core.errors import InvalidRequest

router = APIRouter(prefix="/v1", tags=["OpenAI: batches"])


@router.post("/batches", response_model=OpenAIBatch, summary="Create a batch from an input file")
async def create_batch(
    body: OpenAIBatchCreate,
    openai: OpenAIDep,
    workers: WorkersDep,
    idempotency_key: IdempotencyKey = None,
) -> OpenAIBatch:
    batch = await openai.create_batch(
        body.input_file_id, body.endpoint, body.completion_window, body.metadata, idempotency_key
    )
    await workers.ensure()
    return batch


_LIST_PARAMS = ("limit", "after")


@router.get("/batches", response_model=OpenAIBatchList, summary="Batches, newest first")
async def list_batches(
    request: Request,
    openai: OpenAIDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="A batch id: list the ones after it.")] = None,
) -> OpenAIBatchList:
    unknown = sorted(name for name in request.query_params if name not in _LIST_PARAMS)
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter(s): {', '.join(unknown)}; GET /v1/batches takes "
            f"{' and '.join(_LIST_PARAMS)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    data, has_more = await openai.list_batches(limit, after)
    return OpenAIBatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/batches/{batch_id}", response_model=OpenAIBatch, summary="A batch")
async def get_batch(batch_id: str, openai: OpenAIDep) -> OpenAIBatch:
    return await openai.get_batch(batch_id)


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=OpenAIBatch,
    summary="Cancel a batch (what finished is kept in its output file)",
)
async def cancel_batch(batch_id: str, openai: OpenAIDep) -> OpenAIBatch:
    return await openai.cancel_batch(batch_id)
