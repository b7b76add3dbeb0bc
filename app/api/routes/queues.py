from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SettingsDep, SupervisorDep, TemporalDep
from app.api.schemas import QueuesReport
from app.core.errors import ServiceUnavailable
from app.services.queues import queues_report
from app.services.temporal import TemporalUnavailable

router = APIRouter(tags=["queues"])


@router.get(
    "/queues",
    response_model=QueuesReport,
    summary="Pollers, backlog and worker state per task queue",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "queues": {
                            "cpu": {
                                "task_queue": "llm-batch-cpu",
                                "backlog": 0,
                                "live_pollers": 1,
                                "pollers": [
                                    {
                                        "identity": "worker-cpu@gpu-box:4242",
                                        "last_access_time": "2026-11-29T05:00:00+00:00",
                                    }
                                ],
                                "worker": {"program": "worker-cpu", "state": "RUNNING"},
                            }
                        },
                        "supervisor_reachable": True,
                    }
                }
            }
        }
    },
)
async def queues(
    settings: SettingsDep, temporal: TemporalDep, supervisor: SupervisorDep
) -> QueuesReport:
    try:
        return QueuesReport.model_validate(await queues_report(settings, temporal, supervisor))
    except TemporalUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc
