"""What the API needs to know about the local llama-server: is it up, how many slots."""

from __future__ import annotations

from dataclasses import dataclass

import httpx


class LlamaUnavailable(Exception):
    pass


@dataclass(frozen=True)
class LlamaStatus:
    slots: int
    model: str


async def llama_status(base_url: str, timeout: float = 2.0) -> LlamaStatus:
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
        try:
            health = await client.get("/health")
            if health.status_code == 503:
                raise LlamaUnavailable("llama-server is loading the model")
            health.raise_for_status()
            props = (await client.get("/props")).raise_for_status().json()
        except httpx.HTTPError as exc:
            raise LlamaUnavailable(f"llama-server at {base_url}: {exc!r}") from exc
    return LlamaStatus(
        slots=int(props.get("total_slots", 0)),
        model=str(props.get("model_path", "")),
    )
