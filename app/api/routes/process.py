from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.api.deps import IdempotencyKey, ProcessDep, SettingsDep
from app.api.schemas import ProcessCreate, ProcessOutcome
from app.core.errors import InvalidRequest
from kernel.lines import LineError, normalize_request

router = APIRouter(tags=["process"])

_OUTPUT_EXAMPLE = {
    "id": "proc_0b7d6f3c2a1e4d5f8a9b0c1d2e3f4a5b",
    "status": "completed",
    "output": {
        "id": "batch_req_9c1d",
        "custom_id": "process",
        "response": {
            "status_code": 200,
            "request_id": "req_4f2a",
            "body": {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            },
        },
        "error": None,
    },
}
_PENDING_EXAMPLE = {"id": "proc_0b7d6f3c2a1e4d5f8a9b0c1d2e3f4a5b", "status": "in_progress"}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": _OUTPUT_EXAMPLE}}},
    202: {"content": {"application/json": {"example": _PENDING_EXAMPLE}}},
}


@router.post(
    "/process",
    response_model=ProcessOutcome,
    response_model_exclude_unset=True,
    summary="Run one request; 200 with the output line when done in time, else 202",
    responses=_RESPONSES,
)
async def create_process(
    body: ProcessCreate,
    process: ProcessDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ProcessOutcome:
    line = body.model_dump(exclude={"timeout_s"}, exclude_none=True)
    line.setdefault("custom_id", "process")
    try:
        request = normalize_request(line)
    except LineError as exc:
        raise InvalidRequest(str(exc)) from None
    finished, result = await process.submit(
        request, body.timeout_s or settings.PROCESS_TIMEOUT_SECONDS, idempotency_key
    )
    response.status_code = 200 if finished else 202
    return result


@router.get(
    "/process/{process_id}",
    response_model=ProcessOutcome,
    response_model_exclude_unset=True,
    summary="Result of a request",
    responses=_RESPONSES,
)
async def get_process(process_id: str, process: ProcessDep, response: Response) -> ProcessOutcome:
    finished, result = await process.get(process_id)
    response.status_code = 200 if finished else 202
    return result
