"""Refusing new work while a disk the stack writes to is full.

Two ways to know: this box's own data folders below `DISK_MIN_FREE_MB` (`kernel.disk`, in
the modes that run S3 and Temporal here), and an S3 server that says so itself (MinIO
answers `XMinioStorageFull` with HTTP 507 past its free-space threshold; any server's 507).
SeaweedFS says only `InternalError` on a full disk, which the first way covers locally.
A batch already running is not refused anything: its writes wait for room (see
docs/network-faults.md#full-disks).
"""

from __future__ import annotations

import asyncio

from minio.error import S3Error

from app.core.errors import InsufficientStorage
from kernel.config import Settings
from kernel.disk import low_disks

# What S3 servers say when they have no room: MinIO's own code, and S3's generic ones.
STORAGE_FULL_CODES = frozenset({"XMinioStorageFull", "StorageFull", "InsufficientStorage"})


def full_disk_message(settings: Settings, refused: str) -> str | None:
    """`refused` ("new batches") is refused because ...; None while every disk has room."""
    low = low_disks(settings)
    if not low:
        return None
    named = "; ".join(space.describe() for space in low)
    return f"{refused} are refused until there is room: {named}; free space on that disk"


async def ensure_room(settings: Settings, refused: str) -> None:
    """Raises InsufficientStorage (507) naming the full disk(s) of this box."""
    message = await asyncio.to_thread(full_disk_message, settings, refused)
    if message is not None:
        raise InsufficientStorage(message)


def is_storage_full(exc: BaseException) -> bool:
    """The S3 server says it has no room."""
    if not isinstance(exc, S3Error):
        return False
    status = getattr(exc.response, "status", None)
    return exc.code in STORAGE_FULL_CODES or status == 507


def storage_full(settings: Settings, exc: S3Error, refused: str) -> InsufficientStorage:
    return InsufficientStorage(
        f"{refused} are refused: S3 at {settings.MINIO_ENDPOINT} has no room "
        f"({exc.code}: {exc.message}); free space on its disk"
    )
