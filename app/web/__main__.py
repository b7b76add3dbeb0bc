"""`python -m app.web`: the dashboard on API_HOST:WEB_PORT (supervisord program `web`)."""

from __future__ import annotations

import sys

import uvicorn

from app.core.config import SettingsError, load_settings_or_exit
from app.core.logging import configure_logging
from app.web.server import create_app


def main() -> int:
    settings = load_settings_or_exit()
    try:
        # The dashboard binds the API's host, so the API's rule applies unchanged.
        settings.check_api_binding()
    except SettingsError as exc:
        print(f"error: invalid setting {exc}", file=sys.stderr, flush=True)
        return 2
    configure_logging(settings.LOG_LEVEL)
    uvicorn.run(
        create_app(settings),
        host=settings.API_HOST,
        port=settings.WEB_PORT,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
