from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import (
    AuthorizedDep,
    LlamaDep,
    S3ProbeDep,
    SettingsDep,
    SupervisorDep,
    TemporalDep,
)
from app.api.schemas import HealthReport
from app.services.health import health_report

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthReport,
    response_model_exclude_none=True,
    summary="Liveness and the state of every dependency",
    description=(
        "Always 200 while the API is up. `status` is `ok` when every dependency is, "
        "`degraded` otherwise; each check has `status` (`ok`/`error`) and a `message`. "
        "Never needs the API key, but when `API_KEY` is set only a request that sends it "
        "gets `mode` and `checks` (addresses, bucket, programs); others get `status` alone. "
        "Answers within ~3 s even when a dependency hangs."
    ),
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "status": "ok",
                        "mode": "local",
                        "checks": {
                            "temporal": {"status": "ok", "address": "127.0.0.1:7233"},
                            "s3": {
                                "status": "ok",
                                "endpoint": "127.0.0.1:9000",
                                "bucket": "llm-batch",
                            },
                            "llama": {"status": "ok", "url": "http://127.0.0.1:8080", "slots": 4},
                            "supervisor": {
                                "status": "ok",
                                "programs": {"fastapi": {"status": "ok", "state": "RUNNING"}},
                            },
                        },
                    }
                }
            }
        }
    },
)
async def health(
    settings: SettingsDep,
    temporal: TemporalDep,
    supervisor: SupervisorDep,
    probe: S3ProbeDep,
    llama: LlamaDep,
    authorized: AuthorizedDep,
) -> HealthReport:
    report = await health_report(settings, temporal, supervisor, probe, llama)
    if authorized:
        return report
    return HealthReport(status=report.status)
