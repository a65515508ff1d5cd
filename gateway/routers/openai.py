"""The OpenAI-compatible routes (/v1/completions, /v1/chat/completions, /v1/models[/{id}]) and
vLLM's server's own beside them (/tokenize, /detokenize), so its clients work unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway import protocol as p
from gateway.dependencies import ClientDep, Services, ServicesDep, ServingDep
from gateway.errors import APIError

router = APIRouter(prefix="/v1", tags=["openai"])
vllm_router = APIRouter(tags=["vllm"])


@router.post("/completions")
async def completions(body: p.CompletionRequest, request: Request, caller: ClientDep, serving: ServingDep):
    """Text completion from the served policy."""
    return await serving.completion(body, caller, request)


@router.post("/chat/completions")
async def chat_completions(
    body: p.ChatCompletionRequest, request: Request, caller: ClientDep, serving: ServingDep
):
    """Chat completion from the served policy."""
    return await serving.chat(body, caller, request)


def _card(services: Services) -> p.ModelCard:
    return p.ModelCard(
        id=services.settings.gateway.served_model_name,
        created=int(services.started_at),
        policy_version=services.deployment.version,
    )


@router.get("/models")
async def models(_: ClientDep, services: ServicesDep) -> p.ModelList:
    """The one served model, with the policy version behind it."""
    return p.ModelList(data=[_card(services)])


@router.get("/models/{model_id:path}")
async def model(model_id: str, _: ClientDep, services: ServicesDep) -> p.ModelCard:
    """The served model's card, by its name."""
    card = _card(services)
    if model_id != card.id:
        raise APIError(
            404,
            f"The model '{model_id}' does not exist; this gateway serves '{card.id}'.",
            code="model_not_found",
        )
    return card


@vllm_router.post("/tokenize")
async def tokenize(body: p.TokenizeRequest, _: ClientDep, serving: ServingDep) -> p.TokenizeResponse:
    """Token ids of a prompt or chat, as the served model is given them."""
    return await serving.tokenize(body)


@vllm_router.post("/detokenize")
async def detokenize(body: p.DetokenizeRequest, _: ClientDep, serving: ServingDep) -> p.DetokenizeResponse:
    """The text of token ids."""
    return await serving.detokenize(body)
