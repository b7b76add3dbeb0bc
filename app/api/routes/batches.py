from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.api.deps import BatchesDep, IdempotencyKey, WorkersDep
from app.api.schemas import BatchCreate, BatchCreated, BatchDeleted, BatchList
from kernel.view import BatchView

router = APIRouter(tags=["batches"])

_BATCH_EXAMPLE = {
    "id": "batch_6f1c0d9a4e0b4f5f9a6f2d1e8c7b3a21",
    "object": "batch",
    "endpoint": "/v1/chat/completions",
    "status": "in_progress",
    "input_key": "batches/batch_6f1c0d9a4e0b4f5f9a6f2d1e8c7b3a21/input.jsonl",
    "output_key": "batches/batch_6f1c0d9a4e0b4f5f9a6f2d1e8c7b3a21/output.jsonl",
    "error_key": "batches/batch_6f1c0d9a4e0b4f5f9a6f2d1e8c7b3a21/errors.jsonl",
    "request_counts": {"total": 2, "completed": 1, "failed": 0},
    "errors": None,
    "created_at": 1796000000,
    "in_progress_at": 1796000001,
    "finalizing_at": None,
    "completed_at": None,
    "failed_at": None,
    "cancelling_at": None,
    "cancelled_at": None,
    "metadata": {"project": "demo"},
    "is_terminal": False,
    "ended_at": None,
}


def _example(example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": example}}}}


@router.post(
    "/batch",
    status_code=202,
    response_model=BatchCreated,
    summary="Submit a batch",
    responses={
        202: {
            "content": {
                "application/json": {
                    "example": {
                        **_BATCH_EXAMPLE,
                        "status": "validating",
                        "workers": {"worker-cpu": "started", "worker-gpu": "already_running"},
                    }
                }
            }
        }
    },
)
async def create_batch(
    body: BatchCreate,
    batches: BatchesDep,
    workers: WorkersDep,
    idempotency_key: IdempotencyKey = None,
) -> BatchCreated:
    batch = await batches.submit(
        items=body.items,
        input_object=body.input_key,
        endpoint=body.endpoint,
        defaults=body.defaults,
        metadata=body.metadata,
        shard_size=body.shard_size,
        max_cost_usd=body.max_cost_usd,
        completion_window=body.completion_window,
        idempotency_key=idempotency_key,
    )
    return BatchCreated(**batch.model_dump(), workers=await workers.ensure())


@router.get(
    "/batch/{batch_id}",
    response_model=BatchView,
    summary="Status of a batch",
    responses=_example(_BATCH_EXAMPLE),
)
async def get_batch(batch_id: str, batches: BatchesDep) -> BatchView:
    return await batches.get(batch_id)


@router.get(
    "/batches",
    response_model=BatchList,
    summary="Recent batches, newest first",
    responses=_example({"object": "list", "data": [_BATCH_EXAMPLE]}),
)
async def list_batches(
    batches: BatchesDep, limit: Annotated[int, Query(ge=1, le=1000)] = 20
) -> BatchList:
    return BatchList(data=await batches.recent(limit))


@router.post(
    "/batch/{batch_id}/cancel",
    response_model=BatchView,
    summary="Cancel a batch (finished results are kept)",
    responses=_example({**_BATCH_EXAMPLE, "status": "cancelling"}),
)
async def cancel_batch(batch_id: str, batches: BatchesDep) -> BatchView:
    return await batches.cancel(batch_id)


@router.delete(
    "/batch/{batch_id}",
    response_model=BatchDeleted,
    summary="Delete a finished batch's data (409 while it runs)",
    responses={
        409: {"description": "the batch is still running: cancel it first"},
    },
)
async def delete_batch(batch_id: str, batches: BatchesDep) -> BatchDeleted:
    return BatchDeleted(**await batches.delete(batch_id))


_JSONL_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/x-ndjson": {
                "example": '{"id": "batch_req_1", "custom_id": "q1", "response": '
                '{"status_code": 200, "request_id": "req_1", "body": {"choices": []}}, '
                '"error": null}\n'
            }
        },
        "headers": {
            "X-Batch-Status": {"description": "the batch's status when streamed"},
            "X-Partial": {
                "description": "true when these are the finished shards' lines rather than "
                "the merged file (running, or the merge has not written it yet)"
            },
        },
    }
}


async def _stream(batch_id: str, batches: BatchesDep, errors: bool) -> StreamingResponse:
    batch, chunks, partial = await batches.results(batch_id, errors=errors)
    headers = {"X-Batch-Status": batch.status, "X-Partial": "true" if partial else "false"}
    return StreamingResponse(chunks, media_type="application/x-ndjson", headers=headers)


@router.get(
    "/batch/{batch_id}/results",
    summary="Output lines as JSONL (partial while the batch runs)",
    response_class=StreamingResponse,
    responses=_JSONL_RESPONSE,
)
async def batch_results(batch_id: str, batches: BatchesDep) -> StreamingResponse:
    return await _stream(batch_id, batches, errors=False)


@router.get(
    "/batch/{batch_id}/errors",
    summary="Error lines as JSONL: invalid input lines and failed requests",
    response_class=StreamingResponse,
    responses=_JSONL_RESPONSE,
)
async def batch_errors(batch_id: str, batches: BatchesDep) -> StreamingResponse:
    return await _stream(batch_id, batches, errors=True)
