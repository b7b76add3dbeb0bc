"""OpenAI Files API: `/v1/files`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from app.api.deps import FilesDep, OpenAIDep
from app.api.openai_schemas import OpenAIFile, OpenAIFileDeleted, OpenAIFileList

router = APIRouter(prefix="/v1", tags=["OpenAI: files"])


@router.post(
    "/files",
    response_model=OpenAIFile,
    summary="Upload a JSONL batch input (purpose 'batch'); streamed into the bucket",
)
async def upload_file(
    files: FilesDep,
    file: Annotated[UploadFile, File(description="The JSONL file: one request per line.")],
    purpose: Annotated[str, Form(description="Must be 'batch'.")],
) -> OpenAIFile:
    stored = await files.create(file.file, file.size or 0, file.filename or "", purpose)
    return stored.openai()


@router.get("/files", response_model=OpenAIFileList, summary="Uploaded files and batch files")
async def list_files(
    files: FilesDep,
    purpose: Literal["batch", "batch_output"] | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> OpenAIFileList:
    page, has_more = await files.list(purpose, limit, after, order)
    data = [stored.openai() for stored in page]
    return OpenAIFileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/files/{file_id}", response_model=OpenAIFile, summary="A file's details")
async def get_file(file_id: str, files: FilesDep) -> OpenAIFile:
    return (await files.get(file_id)).openai()


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    summary="A file's content, streamed",
    responses={200: {"content": {"application/jsonl": {}}}},
)
async def file_content(file_id: str, files: FilesDep) -> StreamingResponse:
    stored, chunks = await files.content(file_id)
    return StreamingResponse(
        chunks,
        media_type="application/jsonl",
        headers={
            "Content-Length": str(stored.bytes),
            "Content-Disposition": f'attachment; filename="{stored.id}.jsonl"',
        },
    )


@router.delete("/files/{file_id}", response_model=OpenAIFileDeleted, summary="Delete a file")
async def delete_file(file_id: str, openai: OpenAIDep) -> OpenAIFileDeleted:
    stored = await openai.delete_file(file_id)
    return OpenAIFileDeleted(id=stored.id)
