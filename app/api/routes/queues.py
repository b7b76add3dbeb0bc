from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import S3ProbeDep, SettingsDep, SupervisorDep, TemporalDep
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
                        "boxes": [
                            {
                                "box": "gpu-box-1",
                                "slots": 8,
                                "in_flight": 8,
                                "requests_per_s": 41.5,
                                "tokens_per_s": 1328.0,
                                "requests_total": 12000,
                                "shard_room": 4,
                                "last_seen": "2026-11-29T05:00:03+00:00",
                                "seconds_ago": 1.2,
                                "live": True,
                            }
                        ],
                        "boxes_error": None,
                    }
                }
            }
        }
    },
)
async def queues(
    settings: SettingsDep, temporal: TemporalDep, supervisor: SupervisorDep, s3: S3ProbeDep
) -> QueuesReport:
    try:
        return await queues_report(settings, temporal, supervisor, s3)
    except TemporalUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc
