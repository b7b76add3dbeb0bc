"""Object storage (MinIO or any S3 server) through the `minio` client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import urllib3
from minio import Minio
from minio.error import S3Error

from kernel.config import Settings

logger = logging.getLogger(__name__)


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
    except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
        raise StorageUnavailable(f"S3 is not answering: {exc}") from exc
    if not exists:
        raise StorageUnavailable(f"bucket {bucket!r} does not exist")


def stream_object(
    client: Minio, bucket: str, key: str, chunk_bytes: int = 256 * 1024
) -> Iterator[bytes]:
    """An object's bytes in chunks, its connection released however the reader stops."""
    response = client.get_object(bucket, key)
    try:
        yield from response.stream(chunk_bytes)
    finally:
        response.close()
        response.release_conn()
