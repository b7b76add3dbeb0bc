"""Domain errors and their two shapes: the native routes answer
`{"error": {"code", "type", "message"}}`; the OpenAI-compatible routes under `/v1` answer
OpenAI's `{"error": {"message", "type", "param", "code"}}` (`code` a string or null)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    # OpenAI's machine-readable `code` for this kind of error (a string or null).
    openai_code: str | None = None
    # Extra response headers (e.g. `x-should-retry: false` tells the openai client that
    # retrying would only run the request again).
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.openai_code = code


class InvalidRequest(AppError):
    pass


class NotFound(AppError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(AppError):
    status_code = 409
    error_type = "conflict_error"


class Gone(AppError):
    status_code = 410
    error_type = "gone_error"


class Unauthorized(AppError):
    status_code = 401
    error_type = "authentication_error"
    openai_code = "invalid_api_key"


class ServiceUnavailable(AppError):
    status_code = 503
    error_type = "unavailable_error"


class InsufficientStorage(AppError):
    """A disk the stack writes to is full: nothing new is taken until there is room."""

    status_code = 507
    error_type = "insufficient_storage"
    openai_code = "insufficient_storage"


_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "payload_too_large",
    422: "invalid_request_error",
    503: "unavailable_error",
    507: "insufficient_storage",
}


OPENAI_PREFIX = "/v1/"
# OpenAI's error types by status (its 404s are invalid_request_error too).
_OPENAI_TYPES_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def error_body(code: int, error_type: str, message: str) -> dict[str, dict[str, object]]:
    return {"error": {"code": code, "type": error_type, "message": message}}


def openai_error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, object]]:
    if status >= 500:
        error_type = "server_error"
    else:
        error_type = _OPENAI_TYPES_BY_STATUS.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    code: int,
    error_type: str,
    message: str,
    *,
    path: str = "",
    param: str | None = None,
    openai_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error in the shape of the route it answers (OpenAI's under /v1)."""
    headers = dict(headers or {})
    if code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if is_openai_path(path):
        body = openai_error_body(code, message, param, openai_code)
    else:
        body = error_body(code, error_type, message)
    return JSONResponse(body, status_code=code, headers=headers or None)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return error_response(
            exc.status_code,
            exc.error_type,
            exc.message,
            path=request.url.path,
            param=exc.param,
            openai_code=exc.openai_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = None
        if first.get("type") == "json_invalid":
            message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
        else:
            detail = str(first.get("msg", "")).removeprefix("Value error, ")
            param = _location(tuple(first.get("loc", ())))
            message = f"{param}: {detail}"
        return error_response(
            400,
            "invalid_request_error",
            message.strip().rstrip(":"),
            path=request.url.path,
            param=param,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = _TYPES_BY_STATUS.get(exc.status_code, "api_error")
        message = str(exc.detail)
        if exc.status_code in (404, 405) and is_openai_path(request.url.path):
            message = (
                f"{request.method} {request.url.path} is not supported here; see /docs for the "
                "OpenAI-compatible routes"
            )
        return error_response(exc.status_code, error_type, message, path=request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "server_error",
            f"internal error: {type(exc).__name__}",
            path=request.url.path,
        )
