"""The OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway import protocol as p
from gateway.dependencies import ClientDep, ServicesDep, ServingDep

router = APIRouter(prefix="/v1", tags=["openai"])


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


@router.get("/models")
async def models(_: ClientDep, services: ServicesDep) -> p.ModelList:
    """The one served model, with the policy version behind it."""
    card = p.ModelCard(
        id=services.settings.gateway.served_model_name,
        created=int(services.started_at),
        policy_version=services.deployment.version,
    )
    return p.ModelList(data=[card])
