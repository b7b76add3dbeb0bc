"""`python -m app`: the API server on API_HOST:API_PORT (supervisord program `fastapi`)."""

from __future__ import annotations

from app.core.serve import serve
from app.main import create_app

if __name__ == "__main__":
    raise SystemExit(serve(create_app, lambda settings: settings.API_PORT, 10))
