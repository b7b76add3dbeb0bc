"""What the API needs to know about the local llama-server: is it up, its slots, its model.

One long-lived HTTP client: building one per call costs ~20 ms of CPU here (TLS context set-up,
even for a plain-HTTP URL), which made `GET /v1/models` slower than a whole completion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx


class LlamaUnavailable(Exception):
    pass


@dataclass(frozen=True)
class LlamaStatus:
    slots: int
    model: str


class LlamaProbe:
    def __init__(self, base_url: str, timeout: float = 2.0) -> None:
        self.base_url = base_url
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def status(self) -> LlamaStatus:
        try:
            health = await self._client.get("/health")
            if health.status_code == 503:
                raise LlamaUnavailable("llama-server is loading the model")
            health.raise_for_status()
            props = (await self._client.get("/props")).raise_for_status().json()
        except httpx.HTTPError as exc:
            raise LlamaUnavailable(f"llama-server at {self.base_url}: {exc!r}") from exc
        return LlamaStatus(
            slots=int(props.get("total_slots", 0)),
            model=str(props.get("model_path", "")),
        )

    async def models(self) -> list[dict[str, Any]]:
        """The models llama-server lists, in OpenAI's shape; raises LlamaUnavailable."""
        try:
            listed = (await self._client.get("/v1/models")).raise_for_status().json()
            return [
                {
                    "id": str(item["id"]),
                    "object": "model",
                    "created": int(item.get("created") or time.time()),
                    "owned_by": str(item.get("owned_by") or "llamacpp"),
                }
                for item in listed.get("data", [])
            ]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LlamaUnavailable(f"llama-server's model list: {exc!r}") from exc
