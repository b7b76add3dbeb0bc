"""The dashboard server: a static page plus a read-only JSON proxy to the API.

Routes:

* `GET /` — the page (`static/index.html`); `GET /static/*` — its script and style sheet.
* `GET /api/health` → the API's `GET /health`
* `GET /api/queues` → the API's `GET /queues`
* `GET /api/batches` → the API's `GET /batches?limit=20`

The proxy runs server-side and adds `Authorization: Bearer <API_KEY>` itself when a key is
set, so the browser never holds the API key in script. An answer from the API (including its
own errors, such as 503 while Temporal is down) is passed through with its status code.
When the API cannot be reached, the proxy answers 503 in the project's error shape with the
header `X-API-Unreachable: true`, which the page uses to tell "API down" from "API up, a
dependency down". A 401/403 from the API means the dashboard and the API were given
different keys: that becomes a 502 saying so.

Access: with `API_KEY` unset (only possible on a loopback address, see
`Settings.check_api_binding`) every route is open. With `API_KEY` set, every route, the
page included, needs the key, given either way:

* HTTP Basic auth with the key as the password (any user name). The 401 carries
  `WWW-Authenticate: Basic`, so a browser shows its login prompt and then sends the
  credentials with the page's own requests; nothing is stored by the page.
* `Authorization: Bearer <API_KEY>`, the same header the API takes, for scripts and proxies.

Basic auth sends the key in clear text, like the bearer header does on the API: put TLS in
front (an SSH tunnel or a reverse proxy) when the dashboard is reached over a network.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from app.core.errors import error_body, error_response, install_error_handlers
from kernel.config import Settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONNECT_TIMEOUT_SECONDS = 2.0
# The API's /health waits at most ~2.5 s for a hanging dependency.
READ_TIMEOUT_SECONDS = 3.0
RECENT_BATCHES = 20
UNREACHABLE_HEADER = "X-API-Unreachable"
BASIC_REALM = 'Basic realm="LLM Batch dashboard", charset="UTF-8"'
_NO_STORE = {"Cache-Control": "no-store"}


def api_base_url(settings: Settings) -> str:
    """Where the API listens, as seen from this host (a wildcard bind means loopback)."""
    host = settings.API_HOST
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.API_PORT}"


def key_matches(authorization: str | None, key: str) -> bool:
    """True when the header carries the key as a bearer token or as a Basic password."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        candidate = value.encode()
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        _, colon, candidate = decoded.partition(b":")
        if not colon:
            return False
    else:
        return False
    return secrets.compare_digest(candidate, key.encode())


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse(
        error_body(401, "authentication_error", message),
        status_code=401,
        headers={"WWW-Authenticate": BASIC_REALM, **_NO_STORE},
    )


class ApiProxy:
    """Read-only GETs to the API with a short timeout; every failure in the error shape."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = api_base_url(settings)
        headers = {"Accept": "application/json"}
        if settings.API_KEY is not None:
            headers["Authorization"] = f"Bearer {settings.API_KEY.get_secret_value()}"
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            follow_redirects=False,
        )
        self._reachable: bool | None = None

    async def close(self) -> None:
        await self.client.aclose()

    def _note(self, reachable: bool, detail: str = "") -> None:
        """Logs changes only: the page polls every few seconds."""
        if reachable != self._reachable:
            if reachable:
                logger.info("API at %s is reachable", self.base_url)
            else:
                logger.warning("API at %s is unreachable: %s", self.base_url, detail)
            self._reachable = reachable

    def _unreachable(self, message: str) -> JSONResponse:
        self._note(False, message)
        return JSONResponse(
            error_body(503, "unavailable_error", message),
            status_code=503,
            headers={UNREACHABLE_HEADER: "true", **_NO_STORE},
        )

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Response:
        target = f"GET {self.base_url}{path}"
        try:
            upstream = await self.client.get(path, params=params)
        except httpx.TimeoutException:
            return self._unreachable(
                f"API unreachable: {target} got no answer within {READ_TIMEOUT_SECONDS:g}s"
            )
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            return self._unreachable(
                f"API unreachable: {target} failed ({reason}); is the fastapi program running?"
            )
        self._note(True)
        if upstream.status_code in (401, 403):
            return error_response(
                502,
                "bad_gateway",
                f"the API refused the dashboard's key ({target} answered "
                f"{upstream.status_code}); give the fastapi and web programs the same API_KEY",
            )
        try:
            body = upstream.json()
        except ValueError:
            return error_response(
                502,
                "bad_gateway",
                f"{target} answered HTTP {upstream.status_code} without a JSON body",
            )
        return JSONResponse(body, status_code=upstream.status_code, headers=_NO_STORE)


def install_key_check(app: FastAPI, settings: Settings) -> None:
    if settings.API_KEY is None:
        return
    key = settings.API_KEY.get_secret_value()

    @app.middleware("http")
    async def _require_key(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        header = request.headers.get("authorization")
        if header is None:
            return _unauthorized(
                "the dashboard needs the API key: log in with it as the password "
                "(any user name) or send 'Authorization: Bearer <API_KEY>'"
            )
        if not key_matches(header, key):
            return _unauthorized("invalid API key")
        return await call_next(request)


def create_app(settings: Settings) -> FastAPI:

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        proxy = ApiProxy(settings)
        app.state.proxy = proxy
        logger.info("dashboard reads the API at %s", proxy.base_url)
        try:
            yield
        finally:
            await proxy.close()

    app = FastAPI(
        title="LLM Batch dashboard",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    install_key_check(app, settings)

    def proxy(request: Request) -> ApiProxy:
        current: ApiProxy = request.app.state.proxy
        return current

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/health")
    async def health(request: Request) -> Response:
        return await proxy(request).get("/health")

    @app.get("/api/queues")
    async def queues(request: Request) -> Response:
        return await proxy(request).get("/queues")

    @app.get("/api/batches")
    async def batches(request: Request) -> Response:
        return await proxy(request).get("/batches", params={"limit": RECENT_BATCHES})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
