"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.dependencies import DeploymentDep, ServicesDep
from gateway.errors import error_response

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up (it may still be loading the model)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(deployment: DeploymentDep):
    """Ready only once the engine has loaded and warmed up."""
    if not deployment.ready:
        why = (
            "The engine is still loading or warming up."
            if deployment.starting or not deployment.start_error
            else f"No engine is running ({deployment.start_error}); an admin can POST /admin/policy."
        )
        return error_response(503, why, code="not_ready", headers={"Retry-After": "5"})
    return {"status": "ready", "policy_version": deployment.version}


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
