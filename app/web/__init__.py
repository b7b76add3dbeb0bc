"""The dashboard (supervisord program `web`): one static page and a read-only JSON proxy.

`python -m app.web` serves it on API_HOST:WEB_PORT; see `app.web.server` for the routes and
how access is protected when API_KEY is set.
"""
