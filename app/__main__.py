"""`python -m app`: the API server on API_HOST:API_PORT (supervisord program `fastapi`)."""

from __future__ import annotations

import uvicorn

from app.core.config import SettingsError, load_settings_or_exit
from app.core.logging import configure_logging
from app.main import create_app


def main() -> int:
    settings = load_settings_or_exit()
    try:
        settings.check_api_binding()
    except SettingsError as exc:
        print(f"error: invalid setting {exc}", flush=True)
        return 2
    configure_logging(settings.LOG_LEVEL)
    uvicorn.run(
        create_app(settings),
        host=settings.API_HOST,
        port=settings.API_PORT,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
