"""OpenAI inference routes, answered synchronously through the durable `/process` path."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import OpenAIDep
from app.api.openai_schemas import (
    ChatCompletion,
    ChatCompletionCreate,
    Completion,
    CompletionCreate,
    EmbeddingCreate,
    EmbeddingList,
    OpenAIModel,
    OpenAIModelList,
)
from app.core.errors import NotFound
from kernel.endpoints import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS

router = APIRouter(prefix="/v1", tags=["OpenAI: inference"])


@router.post("/chat/completions", response_model=ChatCompletion, summary="Chat completion")
async def chat_completions(body: ChatCompletionCreate, openai: OpenAIDep) -> ChatCompletion:
    return ChatCompletion(**await openai.run(CHAT_COMPLETIONS, body.model_dump(exclude_unset=True)))


@router.post("/completions", response_model=Completion, summary="Text completion")
async def completions(body: CompletionCreate, openai: OpenAIDep) -> Completion:
    return Completion(**await openai.run(COMPLETIONS, body.model_dump(exclude_unset=True)))


@router.post("/embeddings", response_model=EmbeddingList, summary="Embeddings")
async def embeddings(body: EmbeddingCreate, openai: OpenAIDep) -> EmbeddingList:
    return EmbeddingList(**await openai.run(EMBEDDINGS, body.model_dump(exclude_unset=True)))


@router.get("/models", response_model=OpenAIModelList, summary="The served model")
async def list_models(openai: OpenAIDep) -> OpenAIModelList:
    return OpenAIModelList(data=[OpenAIModel(**model) for model in await openai.models()])


@router.get("/models/{model_id:path}", response_model=OpenAIModel, summary="One served model")
async def get_model(model_id: str, openai: OpenAIDep) -> OpenAIModel:
    for model in await openai.models():
        if model["id"] == model_id:
            return OpenAIModel(**model)
    raise NotFound(f"The model {model_id!r} does not exist", param="model", code="model_not_found")
