"""Health of every dependency, each checked concurrently under a short timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from minio import Minio

from app.api.schemas import HealthReport
from app.services.llama import LlamaProbe
from app.services.temporal import TemporalService
from kernel.config import Settings
from kernel.disk import DiskSpace, disk_space
from kernel.storage import check_bucket
from kernel.supervisor import RUNNING_STATES, SupervisorControl

CHECK_TIMEOUT_SECONDS = 2.5


async def _guarded(check: Awaitable[dict[str, Any]], timeout: float) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check, timeout)
    except TimeoutError:
        return {"status": "error", "message": f"no answer within {timeout:g}s"}
    except Exception as exc:
        return {"status": "error", "message": str(exc) or type(exc).__name__}


async def _temporal(temporal: TemporalService) -> dict[str, Any]:
    await temporal.check()
    return {"status": "ok", "address": temporal.settings.TEMPORAL_ADDRESS}


async def _s3(settings: Settings, probe: Minio) -> dict[str, Any]:
    await check_bucket(probe, settings.MINIO_BUCKET)
    return {"status": "ok", "endpoint": settings.MINIO_ENDPOINT, "bucket": settings.MINIO_BUCKET}


async def _llama(llama: LlamaProbe) -> dict[str, Any]:
    status = await llama.status()
    return {"status": "ok", "url": llama.base_url, "slots": status.slots}


def program_health(state: str, autostart: bool, spawn_error: str = "") -> dict[str, str]:
    """A program is healthy when running, or stopped while this mode doesn't need it running."""
    if state in RUNNING_STATES:
        return {"status": "ok", "state": state}
    if state in ("FATAL", "BACKOFF"):
        reason = spawn_error or "keeps exiting; see its log"
        return {"status": "error", "state": state, "message": reason}
    if autostart:
        return {"status": "error", "state": state, "message": "expected to be running"}
    return {"status": "ok", "state": state, "message": "starts on demand or unused in this mode"}


async def _supervisor(settings: Settings, supervisor: SupervisorControl) -> dict[str, Any]:
    programs = await supervisor.programs()
    expected = settings.autostart_programs
    report = {
        name: program_health(info.state, expected.get(name, False), info.spawn_error)
        for name, info in sorted(programs.items())
    }
    failing = [name for name, entry in report.items() if entry["status"] != "ok"]
    return {
        "status": "error" if failing else "ok",
        **({"message": f"not healthy: {', '.join(failing)}"} if failing else {}),
        "programs": report,
    }


def add_disk(check: dict[str, Any], space: DiskSpace) -> None:
    """Shows a data folder's disk in its component's check (S3's in `s3`, Temporal's in
    `temporal`, the logs' in `supervisor`); a full one turns the check to error and leads
    its message."""
    check.setdefault("disks", {})[space.component] = space.report()
    if not space.low:
        return
    earlier = check.get("message")
    check["status"] = "error"
    check["message"] = space.describe() + (f"; {earlier}" if earlier else "")


async def health_report(
    settings: Settings,
    temporal: TemporalService,
    supervisor: SupervisorControl,
    s3_probe: Minio,
    llama: LlamaProbe,
) -> HealthReport:
    names = ("temporal", "s3", "llama", "supervisor")
    results = await asyncio.gather(
        _guarded(_temporal(temporal), CHECK_TIMEOUT_SECONDS),
        _guarded(_s3(settings, s3_probe), CHECK_TIMEOUT_SECONDS),
        _guarded(_llama(llama), CHECK_TIMEOUT_SECONDS),
        _guarded(_supervisor(settings, supervisor), CHECK_TIMEOUT_SECONDS),
    )
    checks = dict(zip(names, results, strict=True))
    for space in await asyncio.to_thread(disk_space, settings):
        add_disk(checks[space.check], space)
    healthy = all(check["status"] == "ok" for check in checks.values())
    return HealthReport.model_validate(
        {"status": "ok" if healthy else "degraded", "mode": settings.DEPLOY_MODE, "checks": checks}
    )
