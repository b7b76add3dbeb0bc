"""Running an ASGI app of this project under uvicorn, the same way for every program."""

from __future__ import annotations

import sys
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from kernel.config import Settings, SettingsError, load_settings_or_exit
from kernel.logs import configure_logging


def serve(
    create_app: Callable[[Settings], FastAPI],
    port: Callable[[Settings], int],
    graceful_shutdown_seconds: int,
) -> int:
    """Loads the settings, refuses a public address without API_KEY, serves on API_HOST."""
    settings = load_settings_or_exit()
    try:
        settings.check_api_binding()
    except SettingsError as exc:
        print(f"error: invalid setting {exc}", file=sys.stderr, flush=True)
        return 2
    configure_logging(settings.LOG_LEVEL)
    uvicorn.run(
        create_app(settings),
        host=settings.API_HOST,
        port=port(settings),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=graceful_shutdown_seconds,
    )
    return 0
