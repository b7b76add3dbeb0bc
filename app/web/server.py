"""The dashboard server: a static page plus a JSON proxy to the API.

Routes:

* `GET /` — the page (`static/index.html`); `GET /static/*` — its script, style sheet and
  icon; `GET /favicon.ico` — the icon.
* `GET /api/health` → the API's `GET /health`
* `GET /api/queues` → the API's `GET /queues`
* `GET /api/batches` → the API's `GET /batches?limit=20`
* `POST /api/batch?endpoint=&defaults=&max_cost_usd=&shard_size=` with a JSONL body (the
  file the user picked) → the API's `POST /batch` with the lines as inline `items`. A line
  that is not JSON is refused here with its number; the API checks the rest (and its own
  MAX_INLINE_ITEMS and MAX_REQUEST_BYTES limits).
* `GET /api/batch/{id}` → `GET /batch/{id}`; `POST /api/batch/{id}/cancel` → the cancel;
  `POST /api/batch/{id}/retry` → the retry of its failed and unfinished lines.
* `GET /api/batch/{id}/results` and `.../errors` → the JSONL streamed through, as a
  download named `{id}-output.jsonl` / `{id}-errors.jsonl`.

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
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from app.core.errors import error_body, error_response, install_error_handlers
from kernel.config import Settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONNECT_TIMEOUT_SECONDS = 2.0
# The API's /health waits at most ~2.5 s for a hanging dependency.
READ_TIMEOUT_SECONDS = 3.0
# Submitting stages the items in S3 first; downloads stream for as long as they take.
SUBMIT_TIMEOUT_SECONDS = 120.0
RECENT_BATCHES = 20
UNREACHABLE_HEADER = "X-API-Unreachable"
BASIC_REALM = 'Basic realm="LLM Batch dashboard", charset="UTF-8"'
_NO_STORE = {"Cache-Control": "no-store"}


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
        self.base_url = settings.api_url
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
        return await self.call("GET", path, params=params)

    async def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float = READ_TIMEOUT_SECONDS,
    ) -> Response:
        target = f"{method} {self.base_url}{path}"
        try:
            upstream = await self.client.request(
                method,
                path,
                params=params,
                json=body,
                timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS),
            )
        except httpx.TimeoutException:
            return self._unreachable(f"API unreachable: {target} got no answer within {timeout:g}s")
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

    async def download(self, path: str, filename: str) -> Response:
        """Streams a JSONL route of the API through, as an attachment."""
        target = f"GET {self.base_url}{path}"
        request = self.client.build_request(
            "GET", path, timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_SECONDS)
        )
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            return self._unreachable(f"API unreachable: {target} failed ({reason})")
        if upstream.status_code >= 400:
            await upstream.aread()
            await upstream.aclose()
            try:
                body = upstream.json()
            except ValueError:
                return error_response(
                    502, "bad_gateway", f"{target} answered HTTP {upstream.status_code}"
                )
            return JSONResponse(body, status_code=upstream.status_code, headers=_NO_STORE)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_bytes():
                    yield chunk
            finally:
                await upstream.aclose()

        headers = {
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Batch-Status": upstream.headers.get("X-Batch-Status", ""),
            **_NO_STORE,
        }
        return StreamingResponse(chunks(), media_type="application/x-ndjson", headers=headers)


def jsonl_items(payload: bytes) -> list[Any]:
    """The lines of an uploaded JSONL file; ValueError names the first line that is not
    JSON. Blank lines are skipped."""
    items: list[Any] = []
    for number, line in enumerate(payload.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except ValueError as exc:
            raise ValueError(f"line {number} of the file is not JSON: {exc}") from None
    return items


def batch_body(
    payload: bytes,
    endpoint: str | None,
    defaults: str | None,
    max_cost_usd: str | None,
    shard_size: str | None = None,
) -> dict[str, Any]:
    """The API's POST /batch body for an uploaded file and the form's options."""
    items = jsonl_items(payload)
    if not items:
        raise ValueError("the file has no request lines")
    body: dict[str, Any] = {"items": items}
    if endpoint:
        body["endpoint"] = endpoint
    if defaults and defaults.strip():
        try:
            parsed = json.loads(defaults)
        except ValueError as exc:
            raise ValueError(f"defaults is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError('defaults must be a JSON object, e.g. {"max_tokens": 64}')
        body["defaults"] = parsed
    if max_cost_usd and max_cost_usd.strip():
        try:
            body["max_cost_usd"] = float(max_cost_usd)
        except ValueError:
            raise ValueError(f"budget must be a number of dollars, got {max_cost_usd!r}") from None
    if shard_size and shard_size.strip():
        if not shard_size.strip().isdigit():
            raise ValueError(f"shard size must be a whole number, got {shard_size!r}")
        body["shard_size"] = int(shard_size)
    return body


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

    @app.post("/api/batch")
    async def submit(
        request: Request,
        endpoint: str | None = None,
        defaults: str | None = None,
        max_cost_usd: str | None = None,
        shard_size: str | None = None,
    ) -> Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.MAX_REQUEST_BYTES:
            return error_response(
                413,
                "payload_too_large",
                f"the file is {int(length)} bytes; the limit is {settings.MAX_REQUEST_BYTES} "
                "(MAX_REQUEST_BYTES): split it, or upload it to the bucket and use input_key",
            )
        try:
            body = batch_body(await request.body(), endpoint, defaults, max_cost_usd, shard_size)
        except ValueError as exc:
            return error_response(400, "invalid_request_error", str(exc))
        return await proxy(request).call(
            "POST", "/batch", body=body, timeout=SUBMIT_TIMEOUT_SECONDS
        )

    @app.get("/api/batch/{batch_id}")
    async def batch(request: Request, batch_id: str) -> Response:
        return await proxy(request).get(f"/batch/{batch_id}")

    @app.post("/api/batch/{batch_id}/cancel")
    async def cancel(request: Request, batch_id: str) -> Response:
        return await proxy(request).call("POST", f"/batch/{batch_id}/cancel")

    @app.post("/api/batch/{batch_id}/retry")
    async def retry(request: Request, batch_id: str) -> Response:
        return await proxy(request).call("POST", f"/batch/{batch_id}/retry", body={})

    @app.get("/api/batch/{batch_id}/results")
    async def results(request: Request, batch_id: str) -> Response:
        return await proxy(request).download(
            f"/batch/{batch_id}/results", f"{batch_id}-output.jsonl"
        )

    @app.get("/api/batch/{batch_id}/errors")
    async def errors(request: Request, batch_id: str) -> Response:
        return await proxy(request).download(
            f"/batch/{batch_id}/errors", f"{batch_id}-errors.jsonl"
        )

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "favicon.svg",
            media_type="image/svg+xml",
            headers={"Cache-Control": "max-age=86400"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
