"""Free space on the disks of the data folders this stack owns.

The S3 server's objects (`DATA_DIR/s3`) and Temporal's SQLite file (`DATA_DIR/temporal`)
live on this box only in the modes that run those servers (`standalone`, `local`); the logs
(`DATA_DIR/logs`) always do. Each folder's filesystem is read with `statvfs` (microseconds,
no I/O): a folder with less than `DISK_MIN_FREE_MB` free is *low*. `/health` shows every
folder's free bytes and names a low one; new uploads and batches are refused while one is
(507, see app/services/disk.py). Nothing here writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kernel.config import Settings

MIB = 1 << 20

# Which component keeps what in which folder under DATA_DIR, and the /health check that
# shows it.
COMPONENTS: dict[str, tuple[str, str]] = {
    "s3": ("s3", "S3's data folder"),
    "temporal": ("temporal", "Temporal's data folder (its SQLite file)"),
    "logs": ("supervisor", "the logs folder"),
}


@dataclass(frozen=True)
class DiskSpace:
    component: str  # s3, temporal or logs
    path: Path
    free_bytes: int
    total_bytes: int
    min_free_bytes: int

    @property
    def low(self) -> bool:
        return self.min_free_bytes > 0 and self.free_bytes < self.min_free_bytes

    @property
    def check(self) -> str:
        """The /health check that shows this folder."""
        return COMPONENTS[self.component][0]

    def describe(self) -> str:
        """`S3's data folder /data/s3 is full: 0 bytes free of 40 MiB (DISK_MIN_FREE_MB=256)`."""
        what = COMPONENTS[self.component][1]
        state = "is full" if self.low else "has room"
        return (
            f"{what} {self.path} {state}: {self.free_bytes} bytes free of "
            f"{self.total_bytes // MIB} MiB (DISK_MIN_FREE_MB={self.min_free_bytes // MIB})"
        )

    def report(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "free_bytes": self.free_bytes,
            "total_bytes": self.total_bytes,
            "min_free_bytes": self.min_free_bytes,
            "status": "full" if self.low else "ok",
        }


def watched_folders(settings: Settings) -> dict[str, Path]:
    """The data folders of this box by component, for the servers this mode runs here."""
    folders: dict[str, Path] = {}
    if settings.runs_s3:
        folders["s3"] = settings.data_dir / "s3"
    if settings.runs_temporal:
        folders["temporal"] = settings.data_dir / "temporal"
    folders["logs"] = settings.data_dir / "logs"
    return folders


def _existing(path: Path) -> Path | None:
    """The folder itself, or the nearest parent that exists (its disk is the one it will
    be made on)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def space_of(component: str, path: Path, min_free_bytes: int) -> DiskSpace | None:
    """The free space of the filesystem holding `path`; None when it cannot be read."""
    found = _existing(path)
    if found is None:
        return None
    try:
        stats = os.statvfs(found)
    except OSError:
        return None
    return DiskSpace(
        component=component,
        path=path,
        free_bytes=stats.f_bavail * stats.f_frsize,
        total_bytes=stats.f_blocks * stats.f_frsize,
        min_free_bytes=min_free_bytes,
    )


def disk_space(settings: Settings) -> list[DiskSpace]:
    """Every watched folder's disk, in the order of `COMPONENTS`."""
    min_free = settings.DISK_MIN_FREE_MB * MIB
    found = (space_of(name, path, min_free) for name, path in watched_folders(settings).items())
    return [space for space in found if space is not None]


def low_disks(settings: Settings) -> list[DiskSpace]:
    """The watched folders whose disk has less than DISK_MIN_FREE_MB free."""
    if settings.DISK_MIN_FREE_MB <= 0:
        return []
    return [space for space in disk_space(settings) if space.low]
