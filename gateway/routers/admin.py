"""Admin routes (admin credential only): the policy versions, which one is served, and the canary."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import admin
from gateway.deployment import start_canary, stop_canary, switch_version
from gateway.errors import APIError
from inference.registry import RegistryError, UnknownVersion

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin)])


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    mode: Literal["in_place", "blue_green"] | None = None  # default: the gateway's engine.swap_mode


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str
    fraction: float = Field(gt=0.0, lt=1.0)


@router.get("/versions")
async def versions(request: Request) -> dict:
    """Every registry version with its metadata, and which one is served."""
    state = request.app.state
    registry = state.engine.registry
    canary = state.engine.canary
    return {
        "serving": state.engine.version,
        "current": registry.current(),
        "swap_mode": state.settings.engine.swap_mode,
        "canary": asdict(canary) if canary else None,
        "engines": state.engine.engines(),
        "versions": [asdict(registry.info(name)) for name in registry.names()],
    }


def _require_ready(request: Request) -> None:
    if not request.app.state.engine.ready:
        raise APIError(503, "The engine is still warming up.", code="not_ready", headers={"Retry-After": "5"})


def _refused(exc: RegistryError) -> APIError:
    status = 404 if isinstance(exc, UnknownVersion) else 409
    return APIError(status, str(exc), param="version", code="version_refused")


async def _switch(request: Request, version: str, mode: str | None = None) -> dict:
    _require_ready(request)
    previous = request.app.state.engine.version
    try:
        switch = await switch_version(request.app, version, mode)
    except RegistryError as exc:
        raise _refused(exc) from exc
    return {"serving": version, "previous": previous, "method": switch.method, "seconds": round(switch.seconds, 4),
            "at": time.time()}


@router.post("/policy")
async def promote(body: PromoteRequest, request: Request) -> dict:
    """Serve a registry version from the next request on; no request fails (either swap mode)."""
    return await _switch(request, body.version, body.mode)


@router.post("/canary")
async def canary(body: CanaryRequest, request: Request) -> dict:
    """Send a fraction of new requests to a candidate version; promote it with POST /admin/policy."""
    _require_ready(request)
    try:
        await start_canary(request.app, body.version, body.fraction)
    except RegistryError as exc:
        raise _refused(exc) from exc
    return {"serving": request.app.state.engine.version, "canary": {"version": body.version, "fraction": body.fraction}}


@router.delete("/canary")
async def end_canary(request: Request) -> dict:
    """Stop the canary: every new request goes to the serving version."""
    stopped = await stop_canary(request.app)
    if stopped is None:
        raise APIError(404, "There is no canary to stop.", code="no_canary")
    return {"serving": request.app.state.engine.version, "stopped": stopped}


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
