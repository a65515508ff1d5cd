"""Admin routes (admin credential only): the policy versions and which one is served."""

from __future__ import annotations

import time
from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from gateway.auth import admin
from gateway.deployment import switch_version
from gateway.errors import APIError
from inference.registry import RegistryError, UnknownVersion

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin)])


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str


@router.get("/versions")
async def versions(request: Request) -> dict:
    """Every registry version with its metadata, and which one is served."""
    state = request.app.state
    registry = state.engine.registry
    return {
        "serving": state.engine.version,
        "current": registry.current(),
        "versions": [asdict(registry.info(name)) for name in registry.names()],
    }


async def _switch(request: Request, version: str) -> dict:
    state = request.app.state
    if not state.engine.ready:
        raise APIError(503, "The engine is still warming up.", code="not_ready", headers={"Retry-After": "5"})
    previous = state.engine.version
    try:
        seconds = await switch_version(request.app, version)
    except RegistryError as exc:
        status = 404 if isinstance(exc, UnknownVersion) else 409
        raise APIError(status, str(exc), param="version", code="version_refused") from exc
    return {"serving": version, "previous": previous, "seconds": round(seconds, 4), "at": time.time()}


@router.post("/policy")
async def promote(body: PromoteRequest, request: Request) -> dict:
    """Serve a registry version from the next request on (in place: no request fails)."""
    return await _switch(request, body.version)


@router.post("/rollback")
async def rollback(request: Request) -> dict:
    """Go back to the version served before the last switch."""
    history = request.app.state.history
    if not history:
        raise APIError(409, "Nothing to roll back to: no earlier version was served.", code="no_history")
    target = history.pop()
    result = await _switch(request, target)
    history.pop()  # the switch pushed the version we just left; a rollback is not itself undone
    return result
