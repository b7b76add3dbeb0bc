from __future__ import annotations

import re
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.api.deps import BatchesDep, IdempotencyKey, RetriesDep, WorkersDep
from app.api.schemas import (
    BatchCreate,
    BatchCreated,
    BatchDeleted,
    BatchList,
    BatchRetried,
    RetryCreate,
    RetrySelection,
)
from app.core.errors import InvalidRequest
from kernel.lifecycle import BatchState
from kernel.retry import INVALID_CODE, LEFT_OUT_REASON
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


_LIST_PARAMS = {"limit", "after", "status"}
_METADATA_PARAM = re.compile(r"^metadata\[(?P<key>[^\[\]]+)\]$")
_STATES = frozenset(get_args(BatchState))


def _list_filters(request: Request) -> tuple[frozenset[str] | None, dict[str, str]]:
    """(statuses, metadata pairs) of the query; a 400 naming any unknown parameter."""
    unknown = sorted(
        name
        for name in request.query_params
        if name not in _LIST_PARAMS and not _METADATA_PARAM.match(name)
    )
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter(s): {', '.join(unknown)}; GET /batches takes limit, "
            "after, status and metadata[KEY]",
            param=unknown[0],
        )
    statuses = None
    named = [s.strip() for v in request.query_params.getlist("status") for s in v.split(",")]
    if named:
        bad = sorted({s for s in named if s not in _STATES})
        if bad:
            raise InvalidRequest(
                f"status: {', '.join(map(repr, bad))} is not a batch status; use one of "
                f"{', '.join(sorted(_STATES))}",
                param="status",
            )
        statuses = frozenset(named)
    metadata: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        match = _METADATA_PARAM.match(name)
        if match:
            metadata[match["key"]] = value
    return statuses, metadata


@router.get(
    "/batches",
    response_model=BatchList,
    summary="Batches, newest first; filters and a cursor",
    responses=_example(
        {
            "object": "list",
            "data": [_BATCH_EXAMPLE],
            "first_id": _BATCH_EXAMPLE["id"],
            "last_id": _BATCH_EXAMPLE["id"],
            "has_more": False,
        }
    ),
)
async def list_batches(
    request: Request,
    batches: BatchesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after: Annotated[
        str | None, Query(description="A batch id (the last_id of a page): list the ones after it.")
    ] = None,
    status: Annotated[
        str | None,
        Query(description="Only batches in this status (comma-separated for several)."),
    ] = None,
) -> BatchList:
    """Newest first by creation. `metadata[KEY]=VALUE` (repeatable) keeps only the batches
    whose metadata has every such pair. Pass the page's `last_id` as `after` for the next
    page while `has_more` is true."""
    del status  # read with the metadata filters from the query itself
    statuses, metadata = _list_filters(request)
    data, has_more = await batches.listing(limit, after, statuses, metadata)
    return BatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.post(
    "/batch/{batch_id}/cancel",
    response_model=BatchView,
    summary="Cancel a batch (finished results are kept)",
    responses=_example({**_BATCH_EXAMPLE, "status": "cancelling"}),
)
async def cancel_batch(batch_id: str, batches: BatchesDep) -> BatchView:
    return await batches.cancel(batch_id)


@router.post(
    "/batch/{batch_id}/retry",
    status_code=202,
    response_model=BatchRetried,
    summary="A new batch of an ended batch's failed and/or unfinished lines",
    responses={
        404: {"description": "no such batch"},
        409: {"description": "the batch has not ended, or nothing is left to retry"},
        410: {"description": "the batch's data was deleted"},
    },
)
async def retry_batch(
    batch_id: str,
    retries: RetriesDep,
    workers: WorkersDep,
    body: RetryCreate | None = None,
) -> BatchRetried:
    """Sends again, with the batch's settings (endpoint, defaults, shard size, completion
    window, budget, metadata), the requests that failed and/or never ran; invalid input lines
    are left out (they would fail the same way). The new batch has `retry_of`, the original
    lists it in `retried_by`."""
    wanted = body or RetryCreate()
    batch, counts = await retries.retry(
        batch_id, failed=wanted.failed, unfinished=wanted.unfinished
    )
    selection = RetrySelection(
        of=batch_id,
        failed=counts.failed,
        unfinished=counts.unfinished,
        left_out=counts.left_out,
        left_out_reason=LEFT_OUT_REASON if counts.left_out.get(INVALID_CODE) else None,
    )
    return BatchRetried(**batch.model_dump(), workers=await workers.ensure(), retry=selection)


@router.delete(
    "/batch/{batch_id}",
    response_model=BatchDeleted,
    summary="Delete a finished batch's data (409 while it runs)",
    responses={
        409: {"description": "the batch is still running: cancel it first"},
    },
)
async def delete_batch(batch_id: str, batches: BatchesDep) -> BatchDeleted:
    return await batches.delete(batch_id)


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


async def _stream(
    batch_id: str, batches: BatchesDep, retries: RetriesDep, errors: bool, merged: bool
) -> StreamingResponse:
    if merged:
        batch, chain, chunks, partial = await retries.merged(batch_id, errors=errors)
        headers = {
            "X-Batch-Status": batch.status,
            "X-Partial": "true" if partial else "false",
            "X-Batch-Chain": ",".join(b.id for b in chain),
        }
        return StreamingResponse(chunks, media_type="application/x-ndjson", headers=headers)
    batch, chunks, partial = await batches.results(batch_id, errors=errors)
    headers = {"X-Batch-Status": batch.status, "X-Partial": "true" if partial else "false"}
    return StreamingResponse(chunks, media_type="application/x-ndjson", headers=headers)


Merged = Annotated[
    bool,
    Query(
        description="One line per custom_id across the batch's chain of retries (retry_of, "
        "retried_by, both ways), the newest batch's answer winning."
    ),
]


@router.get(
    "/batch/{batch_id}/results",
    summary="Output lines as JSONL (partial while the batch runs)",
    response_class=StreamingResponse,
    responses=_JSONL_RESPONSE,
)
async def batch_results(
    batch_id: str, batches: BatchesDep, retries: RetriesDep, merged: Merged = False
) -> StreamingResponse:
    return await _stream(batch_id, batches, retries, errors=False, merged=merged)


@router.get(
    "/batch/{batch_id}/errors",
    summary="Error lines as JSONL: invalid input lines and failed requests",
    response_class=StreamingResponse,
    responses=_JSONL_RESPONSE,
)
async def batch_errors(
    batch_id: str, batches: BatchesDep, retries: RetriesDep, merged: Merged = False
) -> StreamingResponse:
    return await _stream(batch_id, batches, retries, errors=True, merged=merged)
