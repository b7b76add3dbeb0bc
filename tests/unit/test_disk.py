"""Full disks: which folders are watched, when one is full, what /health and uploads say."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from minio.error import S3Error

from app.core.errors import InsufficientStorage
from app.main import create_app
from app.services.disk import ensure_room, is_storage_full
from app.services.health import add_disk
from kernel.config import Settings
from kernel.disk import MIB, DiskSpace, disk_space, low_disks, space_of, watched_folders

HUGE_MB = 1 << 40  # more free space than any disk has


def settings(tmp_path: Path, **values: object) -> Settings:
    base: dict[str, object] = {
        "AUTO_START_WORKERS": False,
        "TEMPORAL_ADDRESS": "127.0.0.1:1",
        "MINIO_ENDPOINT": "127.0.0.1:1",
        "LLAMA_URL": "http://127.0.0.1:1",
        "SUPERVISOR_SOCKET": tmp_path / "none.sock",
        "DATA_DIR": tmp_path / "data",
    }
    base.update(values)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


def test_the_folders_watched_follow_the_mode(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert watched_folders(settings(tmp_path, DEPLOY_MODE="local")) == {
        "s3": data / "s3",
        "temporal": data / "temporal",
        "logs": data / "logs",
    }
    # hybrid: Temporal and S3 live elsewhere; only the logs are this box's.
    assert watched_folders(settings(tmp_path, DEPLOY_MODE="hybrid")) == {"logs": data / "logs"}


def test_a_folder_not_made_yet_is_read_on_its_parents_disk(tmp_path: Path) -> None:
    space = space_of("s3", tmp_path / "not" / "yet", 0)
    assert space is not None
    assert space.total_bytes > 0 and 0 <= space.free_bytes <= space.total_bytes
    assert not space.low  # 0: off


def test_under_the_threshold_is_full_and_described(tmp_path: Path) -> None:
    full = settings(tmp_path, DEPLOY_MODE="local", DISK_MIN_FREE_MB=HUGE_MB)
    low = low_disks(full)
    assert [space.component for space in low] == ["s3", "temporal", "logs"]
    message = low[0].describe()
    assert message.startswith(f"S3's data folder {tmp_path / 'data' / 's3'} is full: ")
    assert "bytes free of" in message and f"DISK_MIN_FREE_MB={HUGE_MB}" in message
    assert low_disks(settings(tmp_path, DEPLOY_MODE="local", DISK_MIN_FREE_MB=0)) == []
    assert [s.low for s in disk_space(settings(tmp_path, DISK_MIN_FREE_MB=1))] == [False]


def test_a_full_folder_turns_its_check_to_error() -> None:
    check: dict[str, Any] = {"status": "ok", "endpoint": "127.0.0.1:9000"}
    add_disk(check, DiskSpace("s3", Path("/d/s3"), 10 * MIB, 40 * MIB, 0))
    assert check["status"] == "ok" and check["disks"]["s3"]["status"] == "ok"
    add_disk(check, DiskSpace("s3", Path("/d/s3"), 0, 40 * MIB, 8 * MIB))
    assert check["status"] == "error"
    assert check["message"] == (
        "S3's data folder /d/s3 is full: 0 bytes free of 40 MiB (DISK_MIN_FREE_MB=8)"
    )
    assert check["disks"]["s3"] == {
        "path": "/d/s3",
        "free_bytes": 0,
        "total_bytes": 40 * MIB,
        "min_free_bytes": 8 * MIB,
        "status": "full",
    }
    down: dict[str, Any] = {"status": "error", "message": "no answer within 2.5s"}
    add_disk(down, DiskSpace("temporal", Path("/d/temporal"), 0, MIB, MIB))
    assert down["message"].startswith("Temporal's data folder (its SQLite file) /d/temporal")
    assert down["message"].endswith("; no answer within 2.5s")


def test_new_work_is_refused_with_507_naming_the_disk(tmp_path: Path) -> None:
    full = settings(tmp_path, DEPLOY_MODE="local", DISK_MIN_FREE_MB=HUGE_MB)
    with pytest.raises(InsufficientStorage) as raised:
        asyncio.run(ensure_room(full, "new batches"))
    assert raised.value.status_code == 507
    assert raised.value.message.startswith("new batches are refused until there is room: ")
    assert str(tmp_path / "data" / "temporal") in raised.value.message
    asyncio.run(ensure_room(settings(tmp_path, DEPLOY_MODE="local"), "new batches"))

    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}
    with TestClient(create_app(full)) as client:
        response = client.post(
            "/v1/files",
            files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")},
            data={"purpose": "batch"},
        )
        health = client.get("/health").json()
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and error["type"] == "server_error"
    assert "new uploads are refused" in error["message"] and "S3's data folder" in error["message"]
    assert health["checks"]["s3"]["disks"]["s3"]["status"] == "full"
    assert health["checks"]["supervisor"]["disks"]["logs"]["status"] == "full"


class _Response:
    def __init__(self, status: int) -> None:
        self.status = status


def _s3_error(code: str, status: int) -> S3Error:
    return S3Error(_Response(status), code, "m", "/b/k", "r", "h")  # type: ignore[arg-type]


def test_an_s3_server_saying_it_is_full() -> None:
    assert is_storage_full(_s3_error("XMinioStorageFull", 507))
    assert is_storage_full(_s3_error("Whatever", 507))
    # SeaweedFS's answer to a full disk says nothing more than this: not recognised.
    assert not is_storage_full(_s3_error("InternalError", 500))
    assert not is_storage_full(OSError("x"))
