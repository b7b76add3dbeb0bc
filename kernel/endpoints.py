"""The OpenAI endpoints a request line may name, and the largest line accepted."""

from __future__ import annotations

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS)
MAX_LINE_BYTES = 1_000_000
