"""Files of the OpenAI-compatible API, kept in the bucket.

An uploaded file lives at `files/{file_id}` with its name, purpose and creation time as the
object's S3 user metadata: no database, nothing to keep in step. A batch's own files are
files too, under ids derived from the batch id (no copying; `kernel.keys` maps ids to
objects): its input has purpose `batch`, its output and error files `batch_output`.

Uploads are spooled to disk by the multipart parser (never whole in memory), checked line by
line (each non-blank line a JSON object of at most MAX_LINE_BYTES), then streamed into the
bucket in parts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal, TypeVar
from urllib.parse import quote, unquote

from minio import Minio
from minio.error import S3Error

from app.api.openai_schemas import OpenAIFile
from app.core.errors import InvalidRequest, NotFound, ServiceUnavailable
from app.services.deleted import DeletedKind, record_deleted
from app.services.disk import ensure_room, is_storage_full, storage_full
from kernel import storage
from kernel.config import Settings
from kernel.endpoints import MAX_LINE_BYTES
from kernel.keys import (
    BATCHES_PREFIX,
    FILES_PREFIX,
    batch_id_of_file,
    file_id_for_key,
    file_key,
    file_key_for_id,
    is_uploaded_file_id,
    new_file_id,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

FilePurpose = Literal["batch", "batch_output"]
UPLOAD_PURPOSES = ("batch",)
_META_FILENAME = "filename"
_META_PURPOSE = "purpose"
_META_CREATED = "created-at"


@dataclass(frozen=True)
class StoredFile:
    id: str
    key: str
    filename: str
    purpose: FilePurpose
    bytes: int
    created_at: int

    def openai(self) -> OpenAIFile:
        return OpenAIFile(
            id=self.id,
            bytes=self.bytes,
            created_at=self.created_at,
            filename=self.filename,
            purpose=self.purpose,
        )


def _key_and_purpose(file_id: str) -> tuple[str, FilePurpose]:
    found = file_key_for_id(file_id)
    if found is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    key, kind = found
    return key, "batch_output" if kind in ("output", "errors") else "batch"


def _epoch(value: dt.datetime | None) -> int:
    return int(value.timestamp()) if value else int(time.time())


def check_jsonl(stream: IO[bytes]) -> int:
    """Reads the upload through once: every non-blank line must be a JSON object. Returns
    the number of request lines; raises InvalidRequest naming the first bad line."""
    lines = number = 0
    while raw := stream.readline(MAX_LINE_BYTES + 2):  # bounded: no line read whole
        number += 1
        if not raw.strip():
            continue
        if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
            raise InvalidRequest(
                f"file line {number} is longer than {MAX_LINE_BYTES} bytes (the line limit)",
                param="file",
            )
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest(
                f"file line {number} is not valid JSON ({exc}); a batch input is JSONL: "
                "one request object per line",
                param="file",
            ) from None
        if not isinstance(parsed, dict):
            raise InvalidRequest(
                f"file line {number}: expected a JSON object, got {type(parsed).__name__}",
                param="file",
            )
        lines += 1
    if lines == 0:
        raise InvalidRequest("the file has no request line", param="file")
    return lines


class FileService:
    def __init__(self, settings: Settings, s3: Minio) -> None:
        self.settings = settings
        self.s3 = s3
        self.bucket = settings.MINIO_BUCKET
        self.endpoint = settings.MINIO_ENDPOINT

    # Upload ----------------------------------------------------------------------------

    def _store(self, stream: IO[bytes], size: int, filename: str, purpose: str) -> StoredFile:
        stream.seek(0)
        check_jsonl(stream)
        stream.seek(0)
        file_id = new_file_id()
        now = int(time.time())
        storage.put_stream(
            self.s3,
            self.bucket,
            file_key(file_id),
            stream,
            size,
            content_type="application/jsonl",
            metadata={
                _META_FILENAME: quote(filename, safe=""),
                _META_PURPOSE: purpose,
                _META_CREATED: str(now),
            },
        )
        logger.info("file %s stored (%s, %d bytes)", file_id, filename, size)
        return StoredFile(file_id, file_key(file_id), filename, "batch", size, now)

    async def create(self, stream: IO[bytes], size: int, filename: str, purpose: str) -> StoredFile:
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(
                f"purpose {purpose!r} is not supported here; upload batch inputs with "
                "purpose 'batch'",
                param="purpose",
            )
        await ensure_room(self.settings, "new uploads")
        try:
            return await self._s3(self._store, stream, size, filename or "upload.jsonl", purpose)
        except ServiceUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and is_storage_full(cause):
                raise storage_full(self.settings, cause, "new uploads") from cause
            raise

    # Lookup ----------------------------------------------------------------------------

    async def _s3(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except S3Error as exc:
            if storage.is_missing(exc):  # deleted since it was looked up
                raise NotFound(
                    "No such File object: it was just deleted", param="file_id"
                ) from None
            raise ServiceUnavailable(f"S3 error: {exc}") from exc
        except OSError as exc:
            raise ServiceUnavailable(f"S3 at {self.endpoint}: {exc}") from exc

    def _stat(self, file_id: str) -> StoredFile:
        key, purpose = _key_and_purpose(file_id)
        stat = storage.stat(self.s3, self.bucket, key)
        if stat is None or not stat.size and purpose == "batch_output":
            # A batch's empty output or error file is no file: the batch names none.
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        filename = unquote(meta.get(f"x-amz-meta-{_META_FILENAME}", "")) or key.rsplit("/", 1)[-1]
        created = meta.get(f"x-amz-meta-{_META_CREATED}", "")
        return StoredFile(
            id=file_id,
            key=key,
            filename=filename if is_uploaded_file_id(file_id) else f"{file_id}.jsonl",
            purpose=purpose,
            bytes=stat.size or 0,
            created_at=int(created) if created.isdigit() else _epoch(stat.last_modified),
        )

    async def get(self, file_id: str) -> StoredFile:
        return await self._s3(self._stat, file_id)

    def _list(self, purpose: str | None) -> list[StoredFile]:
        files: list[StoredFile] = []
        if purpose in (None, "batch"):
            for obj in storage.list_objects(self.s3, self.bucket, FILES_PREFIX):
                file_id = file_id_for_key(obj.object_name or "")
                if file_id:
                    files.append(self._stat(file_id))
        # A batch's files: one listing gives their sizes and times, no per-file request.
        for obj in storage.list_objects(self.s3, self.bucket, BATCHES_PREFIX):
            file_id = file_id_for_key(obj.object_name or "")
            if file_id is None:
                continue
            kind: FilePurpose = "batch" if file_id.endswith("-input") else "batch_output"
            if purpose not in (None, kind):
                continue
            if kind == "batch_output" and not obj.size:
                continue  # no lines: the batch's output_file_id / error_file_id is null
            files.append(
                StoredFile(
                    id=file_id,
                    key=obj.object_name or "",
                    filename=f"{file_id}.jsonl",
                    purpose=kind,
                    bytes=obj.size or 0,
                    created_at=_epoch(obj.last_modified),
                )
            )
        return files

    async def list(
        self, purpose: str | None, limit: int, after: str | None, order: str
    ) -> tuple[list[StoredFile], bool]:
        """(page, has_more), newest first unless order is 'asc'."""
        files = await self._s3(self._list, purpose)
        files.sort(key=lambda f: (f.created_at, f.id), reverse=order != "asc")
        if after:
            ids = [f.id for f in files]
            if after not in ids:
                raise InvalidRequest(f"after: no file {after!r} in this listing", param="after")
            files = files[ids.index(after) + 1 :]
        return files[:limit], len(files) > limit

    # Content ---------------------------------------------------------------------------

    async def content(self, file_id: str) -> tuple[StoredFile, Iterator[bytes]]:
        stored = await self.get(file_id)
        return stored, await self._s3(storage.stream_object, self.s3, self.bucket, stored.key)

    def _remove(self, file_id: str, key: str) -> None:
        batch_id = batch_id_of_file(file_id)
        if batch_id is not None:  # its results routes stop serving these lines too
            kind: DeletedKind = "input"
            if file_id.endswith("-output"):
                kind = "output"
            elif file_id.endswith("-errors"):
                kind = "errors"
            record_deleted(self.s3, self.bucket, batch_id, [kind])
        storage.remove(self.s3, self.bucket, key)

    async def delete(self, file_id: str) -> StoredFile:
        """Removes the file. A batch's output or error file is also no longer served by
        `GET /batch/{id}/results` / `/errors` (410); see `app.services.deleted`."""
        stored = await self.get(file_id)
        await self._s3(self._remove, file_id, stored.key)
        logger.info("file %s deleted (%s)", file_id, stored.key)
        return stored

    async def batch_input_key(self, file_id: str) -> str:
        """The object key of a batch's input file; 404 when missing, 400 when its purpose is
        not 'batch'."""
        stored = await self.get(file_id)
        if stored.purpose != "batch":
            raise InvalidRequest(
                f"file {file_id} has purpose {stored.purpose!r}; a batch's input_file_id must "
                "be a file uploaded with purpose 'batch'",
                param="input_file_id",
            )
        return stored.key
