"""The HTTP side of `llm-batch`: where the API is, its key, and one call per route.

Only HTTP: the CLI imports nothing of the project but `kernel.config` (to read `.env`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from kernel.config import Settings, SettingsError, load_settings
from kernel.keys import file_key, idempotent_id

URL_VARIABLES = ("LLM_BATCH_URL",)
KEY_VARIABLES = ("LLM_BATCH_API_KEY", "API_KEY")
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0
# After the last byte of an upload the API reads the file through once more (its own line
# check) and writes it to the bucket before it answers: minutes for millions of lines.
UPLOAD_READ_TIMEOUT_SECONDS = 1800.0
# What one read of the upload returns at most (plus the rest of the line it ends in).
UPLOAD_CHUNK_BYTES = 1 << 20

# (bytes sent, request lines sent) as the upload goes.
UploadProgress = Callable[[int, int], None]


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


class InputLineError(Exception):
    """A line of the file to upload is not a JSON object."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(f"line {number}: {message}")
        self.number = number
        self.message = message


class JsonlReader:
    """A read-only file object over a JSONL file, read a chunk of whole lines at a time.

    httpx streams a multipart upload by calling `read(n)` until it gets b"" and takes the
    length from `fileno()`; each read here returns whole lines, about n bytes of them, so
    memory holds one chunk whatever the file's size. With `check`, a line that is not a JSON
    object raises InputLineError (the API refuses the whole file for one); whether a line
    is a valid request the API decides per line, in the batch's error file.
    """

    def __init__(
        self, handle: IO[bytes], on_progress: UploadProgress | None = None, check: bool = False
    ) -> None:
        self._handle = handle
        self._on_progress = on_progress
        self._check = check
        self.number = 0  # lines read, blank ones included
        self.lines = 0  # request lines (not blank)
        self.bytes = 0

    def fileno(self) -> int:
        return self._handle.fileno()

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        self.lines += 1
        if not self._check:
            return
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputLineError(
                self.number, f"not JSON ({exc.msg} at column {exc.colno})"
            ) from None
        except UnicodeDecodeError:
            raise InputLineError(self.number, "not UTF-8 text") from None
        if not isinstance(parsed, dict):
            raise InputLineError(
                self.number, f"expected a JSON object, got {type(parsed).__name__}"
            )

    def read(self, size: int = -1) -> bytes:
        limit = size if 0 < size < UPLOAD_CHUNK_BYTES else UPLOAD_CHUNK_BYTES
        parts: list[bytes] = []
        got = 0
        while got < limit:
            line = self._handle.readline()
            if not line:
                break
            self.number += 1
            self._line(line)
            parts.append(line)
            got += len(line)
        self.bytes += got
        if got and self._on_progress is not None:
            self._on_progress(self.bytes, self.lines)
        return b"".join(parts)


def check_jsonl_file(path: Path, on_progress: UploadProgress | None = None) -> int:
    """Reads the file through once, a chunk at a time: its number of request lines, or
    InputLineError naming the first line that is not a JSON object (or an empty file)."""
    with path.open("rb") as handle:
        reader = JsonlReader(handle, on_progress, check=True)
        while reader.read(UPLOAD_CHUNK_BYTES):
            pass
    if reader.lines == 0:
        raise InputLineError(reader.number, "the file has no request lines")
    return reader.lines


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

    def upload(self, path: Path, on_progress: UploadProgress | None = None) -> dict[str, Any]:
        """Streams a JSONL file to `POST /v1/files` (purpose "batch") in constant memory;
        the API's file object, with `lines` (request lines sent) added."""
        with path.open("rb") as handle:
            reader = JsonlReader(handle, on_progress)
            result: dict[str, Any] = self.request(
                "POST",
                "/v1/files",
                data={"purpose": "batch"},
                files={"file": (path.name, reader, "application/jsonl")},
                timeout=httpx.Timeout(
                    READ_TIMEOUT_SECONDS,
                    connect=CONNECT_TIMEOUT_SECONDS,
                    read=UPLOAD_READ_TIMEOUT_SECONDS,
                ),
            )
        result["lines"] = reader.lines
        return result

    def batch_for_key(self, idempotency_key: str) -> dict[str, Any] | None:
        """The batch an earlier submit with this Idempotency-Key started, or None."""
        try:
            return self.batch(idempotent_id("batch", idempotency_key))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def delete_file(self, file_id: str) -> None:
        self.request("DELETE", f"/v1/files/{file_id}")

    def submit_file(
        self, file_id: str, body: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """`POST /batch` with an uploaded file as its input (`input_key`), so the batch keeps
        the native options (endpoint, defaults, metadata, budget, shard size)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        result: dict[str, Any] = self.request(
            "POST", "/batch", json={**body, "input_key": file_key(file_id)}, headers=headers
        )
        return result

    def batches(
        self,
        limit: int,
        status: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """`GET /batches`; the API filters by `status` and by `metadata[KEY]=VALUE`."""
        params: dict[str, str | int] = {"limit": limit}
        if status:
            params["status"] = status
        for key, value in (metadata or {}).items():
            params[f"metadata[{key}]"] = value
        result: list[dict[str, Any]] = self.request("GET", "/batches", params=params)["data"]
        return result

    def retry(self, batch_id: str, failed: bool, unfinished: bool) -> dict[str, Any]:
        """`POST /batch/{id}/retry`: a new batch of the failed and/or unfinished lines."""
        body = {"failed": failed, "unfinished": unfinished}
        result: dict[str, Any] = self.request("POST", f"/batch/{batch_id}/retry", json=body)
        return result

    def cancel(self, batch_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/batch/{batch_id}/cancel")
        return result
