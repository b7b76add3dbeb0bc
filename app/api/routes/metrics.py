from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from app.services.metrics import Metrics

router = APIRouter(tags=["metrics"])

_EXAMPLE = """\
# HELP llm_batch_batches Batches by status
# TYPE llm_batch_batches gauge
llm_batch_batches{status="in_progress"} 1.0
llm_batch_batches{status="completed"} 12.0
# TYPE llm_batch_requests_total counter
llm_batch_requests_total{outcome="completed"} 10000.0
"""


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text exposition format)",
    description=(
        "Batches by status, requests and tokens, GPU seconds, backlog and live pollers per "
        "task queue, HTTP request latency per route, workers started on demand. Temporal is "
        "read at scrape time; `llm_batch_temporal_up` is 0 when it could not be."
    ),
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {"example": _EXAMPLE}}}},
)
async def metrics(request: Request) -> Response:
    collector: Metrics = request.app.state.metrics
    # The 0.0.4 text format: what every Prometheus version reads.
    return Response(await collector.render(), media_type=CONTENT_TYPE_PLAIN_0_0_4)
