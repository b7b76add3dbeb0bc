"""Request dependencies, as Annotated aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from minio import Minio

from app.core.errors import Unauthorized
from app.services.batches import BatchService
from app.services.files import FileService
from app.services.llama import LlamaProbe
from app.services.openai_compat import OpenAIService
from app.services.process import ProcessService
from app.services.retries import RetryService
from app.services.temporal import TemporalService
from app.services.workers import WorkerStarter
from kernel.config import Settings
from kernel.supervisor import SupervisorControl


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_temporal(request: Request) -> TemporalService:
    temporal: TemporalService = request.app.state.temporal
    return temporal


def get_supervisor(request: Request) -> SupervisorControl:
    supervisor: SupervisorControl = request.app.state.supervisor
    return supervisor


def get_workers(request: Request) -> WorkerStarter:
    starter: WorkerStarter = request.app.state.workers
    return starter


def get_llama(request: Request) -> LlamaProbe:
    probe: LlamaProbe = request.app.state.llama
    return probe


def get_s3_probe(request: Request) -> Minio:
    probe: Minio = request.app.state.s3_probe
    return probe


def get_batches(request: Request) -> BatchService:
    service: BatchService = request.app.state.batches
    return service


def get_process(request: Request) -> ProcessService:
    service: ProcessService = request.app.state.process
    return service


def get_files(request: Request) -> FileService:
    service: FileService = request.app.state.files
    return service


def get_retries(request: Request) -> RetryService:
    service: RetryService = request.app.state.retries
    return service


def get_openai(request: Request) -> OpenAIService:
    service: OpenAIService = request.app.state.openai
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
TemporalDep = Annotated[TemporalService, Depends(get_temporal)]
SupervisorDep = Annotated[SupervisorControl, Depends(get_supervisor)]
WorkersDep = Annotated[WorkerStarter, Depends(get_workers)]
LlamaDep = Annotated[LlamaProbe, Depends(get_llama)]
S3ProbeDep = Annotated[Minio, Depends(get_s3_probe)]
BatchesDep = Annotated[BatchService, Depends(get_batches)]
ProcessDep = Annotated[ProcessService, Depends(get_process)]
FilesDep = Annotated[FileService, Depends(get_files)]
OpenAIDep = Annotated[OpenAIService, Depends(get_openai)]
RetriesDep = Annotated[RetryService, Depends(get_retries)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Any unique string (a UUID): a retry with the same key gets the batch "
        "or request the first one started, never a second one.",
    ),
]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer $API_KEY`")


def has_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> bool:
    """True when no key is configured or the request carries the right one."""
    if settings.API_KEY is None:
        return True
    if credentials is None:
        return False
    expected = settings.API_KEY.get_secret_value().encode()
    return secrets.compare_digest(credentials.credentials.encode(), expected)


AuthorizedDep = Annotated[bool, Depends(has_api_key)]


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if settings.API_KEY is None:
        return
    if credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <API_KEY>'")
    expected = settings.API_KEY.get_secret_value().encode()
    if not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized("invalid API key")
