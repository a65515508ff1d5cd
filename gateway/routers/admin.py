"""Admin routes (admin credential only): the policy versions, which one is served, and the canary."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from gateway.dependencies import DeploymentDep, ServicesDep, admin
from gateway.deployment import Deployment, NothingToRollBack
from gateway.errors import APIError
from gateway.protocol import Text
from inference.engine import SwapBusy, Switch
from registry.errors import RegistryError, UnknownVersion

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin)])


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Text
    mode: Literal["in_place", "blue_green"] | None = None  # default: the gateway's engine.swap_mode


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Text
    fraction: float = Field(gt=0.0, lt=1.0)


@router.get("/versions")
async def versions(deployment: DeploymentDep) -> dict:
    """Every registry version with its metadata, and which one is served."""
    registry, canary = deployment.registry, deployment.engine.canary
    return {
        "serving": deployment.version,
        "current": registry.current(),
        "swap_mode": deployment.swap_mode,
        "canary": asdict(canary) if canary else None,
        "engines": deployment.engine.engines(),
        "history": deployment.history,
        "start_error": deployment.start_error,
        "candidate": registry.candidate(),
        "versions": [
            {**asdict(registry.info(name)), "decision": registry.decision(name)} for name in registry.names()
        ],
    }


@router.get("/promotion")
async def promotion(services: ServicesDep) -> dict:
    """The canary controller: the candidate under test with its evidence so far (counts, rate,
    interval, test statistic and bounds), and every decision taken, newest first."""
    registry = services.deployment.registry
    decided = [
        {"version": name, **d} for name in reversed(registry.names()) if (d := registry.decision(name))
    ]
    return {**services.promotion.state(), "proposed": registry.candidate(), "decisions": decided}


def _require_ready(deployment: Deployment, may_start: bool = False) -> None:
    """503 while the engine is starting; a gateway whose engine failed to start accepts only a
    request that picks a version to start on (may_start)."""
    if deployment.ready or (may_start and not deployment.starting and deployment.version is None):
        return
    raise APIError(
        503,
        "The engine is still warming up."
        if deployment.starting or not deployment.start_error
        else f"No engine is running ({deployment.start_error}); POST /admin/policy to start one.",
        code="not_ready",
        headers={"Retry-After": "5"},
    )


def _busy(exc: SwapBusy) -> APIError:
    return APIError(503, f"{exc}; retry shortly.", code="swap_in_progress", headers={"Retry-After": "10"})


def _refused(exc: RegistryError) -> APIError:
    status = 404 if isinstance(exc, UnknownVersion) else 409
    return APIError(status, str(exc), param="version", code="version_refused")


def _switched(version: str, previous: str | None, switch: Switch) -> dict:
    return {
        "serving": version,
        "previous": previous,
        "method": switch.method,
        "seconds": round(switch.seconds, 4),
        "at": time.time(),
    }


@router.post("/policy")
async def promote(body: PromoteRequest, deployment: DeploymentDep) -> dict:
    """Serve a registry version from the next request on; no request fails (either swap mode)."""
    _require_ready(deployment, may_start=True)
    previous = deployment.version
    try:
        switch = await deployment.switch(body.version, body.mode)
    except SwapBusy as exc:
        raise _busy(exc) from exc
    except RegistryError as exc:
        raise _refused(exc) from exc
    return _switched(body.version, previous, switch)


@router.post("/canary")
async def canary(body: CanaryRequest, deployment: DeploymentDep) -> dict:
    """Send a fraction of new requests to a candidate version; promote it with POST /admin/policy."""
    _require_ready(deployment)
    try:
        await deployment.start_canary(body.version, body.fraction)
    except SwapBusy as exc:
        raise _busy(exc) from exc
    except RegistryError as exc:
        raise _refused(exc) from exc
    return {"serving": deployment.version, "canary": {"version": body.version, "fraction": body.fraction}}


@router.delete("/canary")
async def end_canary(deployment: DeploymentDep) -> dict:
    """Stop the canary: every new request goes to the serving version."""
    try:
        stopped = await deployment.stop_canary()
    except SwapBusy as exc:
        raise _busy(exc) from exc
    if stopped is None:
        raise APIError(404, "There is no canary to stop.", code="no_canary")
    return {"serving": deployment.version, "stopped": stopped}


@router.post("/rollback")
async def rollback(deployment: DeploymentDep) -> dict:
    """Go back to the version served before the last switch."""
    _require_ready(deployment)
    previous = deployment.version
    try:
        target, switch = await deployment.rollback()
    except NothingToRollBack:
        raise APIError(
            409, "Nothing to roll back to: no earlier version was served.", code="no_history"
        ) from None
    except SwapBusy as exc:
        raise _busy(exc) from exc
    except RegistryError as exc:
        raise _refused(exc) from exc
    return _switched(target, previous, switch)
