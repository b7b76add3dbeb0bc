"""The Temporal client factory: the API, the workers and the tools connect the same way."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.runtime import Runtime

from kernel.config import Settings


async def connect_temporal(
    settings: Settings, *, identity: str | None = None, runtime: Runtime | None = None
) -> Client:
    return await Client.connect(
        settings.TEMPORAL_ADDRESS,
        namespace=settings.TEMPORAL_NAMESPACE,
        tls=settings.TEMPORAL_TLS,
        api_key=settings.TEMPORAL_API_KEY.get_secret_value() if settings.TEMPORAL_API_KEY else None,
        identity=identity,
        runtime=runtime,
    )
