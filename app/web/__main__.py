"""`python -m app.web`: the dashboard on API_HOST:WEB_PORT (supervisord program `web`).

It binds the API's host, so the API's rule applies unchanged: no public address without
API_KEY."""

from __future__ import annotations

from app.core.serve import serve
from app.web.server import create_app

if __name__ == "__main__":
    raise SystemExit(serve(create_app, lambda settings: settings.WEB_PORT, 5))
