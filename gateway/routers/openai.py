"""The OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations


from fastapi import APIRouter, Depends, Request

from gateway import protocol as p
from gateway.auth import Caller, client

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/completions")
async def completions(body: p.CompletionRequest, request: Request, caller: Caller = Depends(client)):
    """Text completion from the served policy."""
    return await request.app.state.serving.completion(body, caller, request)


@router.post("/chat/completions")
async def chat_completions(body: p.ChatCompletionRequest, request: Request, caller: Caller = Depends(client)):
    """Chat completion from the served policy."""
    return await request.app.state.serving.chat(body, caller, request)


@router.get("/models")
async def models(request: Request, _: Caller = Depends(client)) -> p.ModelList:
    """The one served model, with the policy version behind it."""
    state = request.app.state
    card = p.ModelCard(id=state.settings.gateway.served_model_name, created=int(state.started_at),
                       policy_version=state.engine.version)
    return p.ModelList(data=[card])
