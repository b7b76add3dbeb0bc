"""The OpenAI endpoints a request line may name, and the largest line accepted."""

from __future__ import annotations

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS)
MAX_LINE_BYTES = 1_000_000


# What a request to /v1/embeddings gets from a box whose llama-server runs without
# `--embeddings` (llama-server itself answers 501 "start it with --embeddings").
EMBEDDINGS_OFF_CODE = "embeddings_disabled"
EMBEDDINGS_OFF_MESSAGE = (
    "embeddings are off on this box: its llama-server runs without --embeddings; set "
    "LLAMA_EMBEDDINGS=true in .env and restart the llama program"
)
