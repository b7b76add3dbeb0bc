"""Domain errors and the one error shape: {"error": {"code", "type", "message"}}."""

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

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(AppError):
    pass


class NotFound(AppError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(AppError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLarge(AppError):
    status_code = 413
    error_type = "payload_too_large"


class Unauthorized(AppError):
    status_code = 401
    error_type = "authentication_error"


class ServiceUnavailable(AppError):
    status_code = 503
    error_type = "unavailable_error"


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
}


def error_body(code: int, error_type: str, message: str) -> dict[str, dict[str, object]]:
    return {"error": {"code": code, "type": error_type, "message": message}}


def error_response(code: int, error_type: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    return JSONResponse(error_body(code, error_type, message), status_code=code, headers=headers)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return error_response(exc.status_code, exc.error_type, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
        else:
            detail = str(first.get("msg", "")).removeprefix("Value error, ")
            message = f"{_location(tuple(first.get('loc', ())))}: {detail}"
        return error_response(400, "invalid_request_error", message.strip().rstrip(":"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = _TYPES_BY_STATUS.get(exc.status_code, "api_error")
        return error_response(exc.status_code, error_type, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "server_error", f"internal error: {type(exc).__name__}")
