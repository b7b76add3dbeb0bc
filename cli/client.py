"""The HTTP side of `llm-batch`: where the API is, its key, and one call per route.

Only HTTP: the CLI imports nothing of the project but `kernel.config` (to read `.env`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kernel.config import Settings, SettingsError, load_settings

URL_VARIABLES = ("LLM_BATCH_URL",)
KEY_VARIABLES = ("LLM_BATCH_API_KEY", "API_KEY")
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0


class ApiUnreachable(Exception):
    """No HTTP answer from the API at all."""


class SettingsInvalid(Exception):
    """`.env` (or the environment) has a value the settings check refuses; the message is
    that check's one line."""


class ApiError(Exception):
    """The API answered with an error; the message is its own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _settings() -> Settings:
    """The project's settings from ./.env when there is one, else the project's .env;
    SettingsInvalid when a value is refused (never a silent default address)."""
    local = Path.cwd() / ".env"
    try:
        return load_settings(local if local.is_file() else None)
    except SettingsError as exc:
        raise SettingsInvalid(f"invalid setting {exc}") from None


def default_url(settings: Settings | None) -> str:
    """The API on this machine; through `./deploy_vast.sh tunnel` when a Vast host is set."""
    if settings is None:
        return "http://127.0.0.1:8000"
    if settings.VAST_HOST:
        return f"http://127.0.0.1:{settings.TUNNEL_API_PORT}"
    return settings.api_url


@dataclass
class Target:
    url: str
    key: str | None
    max_inline_items: int


def resolve(url: str | None, key: str | None) -> Target:
    """Flags win, then the environment (LLM_BATCH_URL, LLM_BATCH_API_KEY or API_KEY), then
    `.env` (API_HOST/API_PORT, or TUNNEL_API_PORT when VAST_HOST is set; API_KEY).

    A value of `.env` the settings check refuses is an error (SettingsInvalid) when the
    address would come from it: falling back to a default address could reach another
    stack on the machine. With the address from a flag or LLM_BATCH_URL it is ignored."""
    env_url = next((os.environ[v] for v in URL_VARIABLES if os.environ.get(v)), None)
    settings: Settings | None
    try:
        settings = _settings()
    except SettingsInvalid:
        if not (url or env_url):
            raise
        settings = None
    env_key = next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
    file_key = settings.API_KEY.get_secret_value() if settings and settings.API_KEY else None
    return Target(
        url=(url or env_url or default_url(settings)).rstrip("/"),
        key=key or env_key or file_key,
        max_inline_items=settings.MAX_INLINE_ITEMS if settings else 50_000,
    )


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(body, dict) and "detail" in body:
        return json.dumps(body["detail"])
    return json.dumps(body)[:300]


class Api:
    """One httpx client; every failure becomes ApiUnreachable or ApiError with one line."""

    def __init__(self, target: Target, transport: httpx.BaseTransport | None = None) -> None:
        self.target = target
        headers = {"Accept": "application/json", "User-Agent": "llm-batch-cli"}
        if target.key:
            headers["Authorization"] = f"Bearer {target.key}"
        self.client = httpx.Client(
            base_url=target.url,
            headers=headers,
            timeout=httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def _unreachable(self, exc: Exception) -> ApiUnreachable:
        reason = str(exc) or type(exc).__name__
        return ApiUnreachable(
            f"cannot reach the API at {self.target.url} ({reason}); start it (make up), open "
            "./deploy_vast.sh tunnel, or give --url / LLM_BATCH_URL"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise ApiError(
                response.status_code,
                f"{method} {path}: HTTP {response.status_code}: {_error_message(response)}",
            )
        return response.json()

    def stream_lines(self, path: str) -> Iterator[bytes]:
        """The body of a JSONL route, chunk by chunk (never whole in memory)."""
        try:
            with self.client.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(
                        response.status_code,
                        f"GET {path}: HTTP {response.status_code}: {_error_message(response)}",
                    )
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    # Routes -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/health")
        return result

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/batch", json=body)
        return result

    def batch(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/batch/{batch_id}")
        return result

    def batches(self, limit: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.request("GET", "/batches", params={"limit": limit})[
            "data"
        ]
        return result

    def cancel(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/batch/{batch_id}/cancel")
        return result
