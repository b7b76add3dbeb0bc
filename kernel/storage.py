"""Object storage (MinIO or any S3 server) through the `minio` client: the one layer every
S3 call of the project goes through.

- reading: `stream_object` (an object's bytes in chunks, for HTTP responses and parsers),
  `read_lines` (its non-blank lines), `read_bytes` (a small object whole); each gives the
  connection back to the pool however the reader stops;
- writing: `JsonlSpool` (lines spooled to a temporary file, uploaded as one object in parts),
  `write_jsonl`, `put_stream`, `put_bytes`;
- looking up: `stat`, `exists`, `list_objects`, `remove`;
- errors: `is_missing` (the one set of "no such object" codes, `MISSING_CODES`) and
  `S3_FAILURES` (what an S3 call raises when the server is away or refuses).

One read chunk (`READ_CHUNK_BYTES`) and one part size (`PART_BYTES`, also the most a spool
keeps in memory) for the whole project; see docs/storage.md.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any, BinaryIO, Self, cast

import urllib3
from minio import Minio
from minio.datatypes import Object
from minio.error import S3Error

from kernel.config import Settings
from kernel.jsonl import iter_result_lines

logger = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1 << 20
PART_BYTES = 16 << 20
JSONL = "application/x-ndjson"
# The codes S3 servers give for an object that is not there: MinIO and SeaweedFS say
# NoSuchKey (the minio client says it too for a HEAD answered 404 without a body); some
# servers say NoSuchObject or NotFound. A missing *bucket* (NoSuchBucket) is not a missing
# object: it is a misconfiguration and stays an error.
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})
# What an S3 call raises when the server refuses (S3Error), is away or cut the connection.
S3_FAILURES: tuple[type[Exception], ...] = (S3Error, urllib3.exceptions.HTTPError, OSError)


class StorageUnavailable(Exception):
    pass


def make_minio(settings: Settings, *, probe: bool = False, fail_fast: bool = False) -> Minio:
    """A client; `probe=True` gives one that fails fast (health checks) instead of retrying;
    `fail_fast=True` one for a request path (staging a batch's input): a short connect
    timeout and a single retry, so an S3 outage is a 503 within seconds, not a minute."""
    if probe:
        timeout = urllib3.Timeout(connect=1.0, read=2.0)
        retries = urllib3.Retry(total=0)
    elif fail_fast:
        timeout = urllib3.Timeout(connect=2.0, read=30.0)
        retries = urllib3.Retry(total=1, read=0, backoff_factor=0.2)
    else:
        timeout = urllib3.Timeout(connect=5.0, read=120.0)
        retries = urllib3.Retry(total=5, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504))
    http = urllib3.PoolManager(timeout=timeout, retries=retries, maxsize=16)
    return Minio(
        settings.MINIO_ENDPOINT,
        access_key=settings.MINIO_ACCESS_KEY,
        secret_key=settings.MINIO_SECRET_KEY.get_secret_value(),
        secure=settings.MINIO_SECURE,
        http_client=http,
    )


def ensure_bucket(client: Minio, bucket: str) -> bool:
    """Creates the bucket when missing; returns True when it was created."""
    if client.bucket_exists(bucket):
        return False
    try:
        client.make_bucket(bucket)
    except S3Error as exc:
        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        return False
    logger.info("created bucket %s", bucket)
    return True


async def check_bucket(client: Minio, bucket: str) -> None:
    try:
        exists = await asyncio.to_thread(client.bucket_exists, bucket)
    except S3_FAILURES as exc:
        raise StorageUnavailable(f"S3 is not answering: {exc}") from exc
    if not exists:
        raise StorageUnavailable(f"bucket {bucket!r} does not exist")


def is_missing(exc: BaseException) -> bool:
    """The error says the object does not exist (as opposed to S3 failing)."""
    return isinstance(exc, S3Error) and exc.code in MISSING_CODES


class _Closing:
    """`with` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# Reading -------------------------------------------------------------------------------


class ObjectStream(_Closing, Iterator[bytes]):
    """An object's bytes in chunks. The connection goes back to the pool when the last
    chunk is read, when the stream is closed (also as a context manager) or dropped, or
    when reading fails: a reader that stops early leaks nothing."""

    def __init__(self, response: Any, chunk_bytes: int) -> None:
        self._response: Any = response
        self._chunks: Iterator[bytes] = response.stream(chunk_bytes)

    def __iter__(self) -> ObjectStream:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:  # the end (StopIteration) or a failure: release either way
            self.close()
            raise

    def close(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()
            response.release_conn()

    def __del__(self) -> None:
        self.close()


def stream_object(
    client: Minio, bucket: str, key: str, chunk_bytes: int = READ_CHUNK_BYTES
) -> ObjectStream:
    """The object's bytes in chunks. The object is opened here, so a missing object raises
    now (see `is_missing`), not at the first chunk (for an HTTP response: before the
    status line is sent)."""
    return ObjectStream(client.get_object(bucket, key), chunk_bytes)


def read_lines(
    client: Minio, bucket: str, key: str, *, missing_ok: bool = False
) -> Iterator[bytes]:
    """The object's non-blank lines (without their newline), as it streams in; with
    `missing_ok`, none when the object does not exist. For lines this project wrote: no
    line length limit (an input uploaded by a user goes through `kernel.jsonl.iter_lines`
    over `stream_object`, which bounds it)."""
    try:
        chunks = stream_object(client, bucket, key)
    except S3Error as exc:
        if missing_ok and is_missing(exc):
            return iter(())
        raise
    return _lines(chunks)


def _lines(chunks: ObjectStream) -> Iterator[bytes]:
    with chunks:
        yield from iter_result_lines(chunks)


def read_bytes(client: Minio, bucket: str, key: str) -> bytes | None:
    """A small object whole (a record, a summary); None when it does not exist."""
    try:
        chunks = stream_object(client, bucket, key)
    except S3Error as exc:
        if is_missing(exc):
            return None
        raise
    with chunks:
        return b"".join(chunks)


# Writing -------------------------------------------------------------------------------


def put_stream(
    client: Minio,
    bucket: str,
    key: str,
    data: IO[bytes],
    size: int,
    *,
    content_type: str = JSONL,
    metadata: dict[str, str] | None = None,
) -> None:
    """Uploads `size` bytes of `data` from where it stands: one request up to PART_BYTES,
    a multipart upload in PART_BYTES parts past it."""
    client.put_object(
        bucket,
        key,
        cast(BinaryIO, data),
        size,
        content_type=content_type,
        metadata=cast(Any, metadata),
        part_size=PART_BYTES,
    )


def put_bytes(
    client: Minio, bucket: str, key: str, payload: bytes, *, content_type: str = JSONL
) -> None:
    put_stream(client, bucket, key, io.BytesIO(payload), len(payload), content_type=content_type)


class JsonlSpool(_Closing):
    """JSONL written to a temporary file (in memory up to PART_BYTES, on disk past it) and
    uploaded as one object in parts, never joined into one bytes object. `upload` empties
    the spool, so one spool can write several objects in turn (a batch's shards)."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self._file = tempfile.SpooledTemporaryFile(PART_BYTES)

    @property
    def size(self) -> int:
        """Bytes written since the last upload."""
        return self._file.tell()

    def write(self, data: bytes) -> None:
        """Raw bytes: whole lines, each ending with a newline."""
        self._file.write(data)

    def write_json(self, value: Any) -> None:
        """One line: `value` as JSON."""
        self._file.write(json.dumps(value).encode() + b"\n")

    def upload(self, key: str) -> int:
        """Stores what was written at `key` and empties the spool; returns its size."""
        size = self._file.tell()
        self._file.seek(0)
        put_stream(self.client, self.bucket, key, self._file, size)
        self._file.seek(0)
        self._file.truncate()
        return size

    def close(self) -> None:
        self._file.close()


def write_jsonl(client: Minio, bucket: str, key: str, values: Iterable[Any]) -> int:
    """Stores `values` as JSONL at `key`, one JSON line each; returns the object's size."""
    with JsonlSpool(client, bucket) as spool:
        for value in values:
            spool.write_json(value)
        return spool.upload(key)


# Looking up ----------------------------------------------------------------------------


def stat(client: Minio, bucket: str, key: str) -> Object | None:
    """The object's size, times and metadata; None when it does not exist."""
    try:
        return client.stat_object(bucket, key)
    except S3Error as exc:
        if is_missing(exc):
            return None
        raise


def exists(client: Minio, bucket: str, key: str) -> bool:
    return stat(client, bucket, key) is not None


def list_objects(client: Minio, bucket: str, prefix: str) -> Iterator[Object]:
    """Every object whose key starts with `prefix`, at any depth, in key order."""
    for item in client.list_objects(bucket, prefix=prefix, recursive=True):
        if item.object_name:
            yield item


def remove(client: Minio, bucket: str, key: str) -> None:
    """Removes the object; removing one that does not exist is no error (S3's own rule)."""
    client.remove_object(bucket, key)
