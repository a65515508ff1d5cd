"""The gateway's services and the typed FastAPI dependencies through which routes reach them.

create_app builds one Services; routes declare what they need (`deployment: DeploymentDep`), so
what a route touches is visible in its signature and checked by the type checker.

The dependencies are `async def` although none awaits: FastAPI runs a plain `def` dependency in
its thread pool, a thread hop per dependency per request, which cost the feedback routes a fifth
of their event-loop time. None of them may block (they read memory and take a short lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from core.config import Settings
from feedback.recorder import FeedbackRecorder
from gateway.auth import Caller, KeyStore
from gateway.canary import CanaryController
from gateway.deployment import Deployment
from gateway.errors import APIError
from gateway.metrics import GatewayMetrics
from gateway.ownership import Ownership
from gateway.serving import Serving
from promotion.evidence import EvidenceStore
from promotion.labelling import LabelQueue


@dataclass
class Services:
    """Everything the routes use, built once per app."""

    settings: Settings
    deployment: Deployment
    serving: Serving
    recorder: FeedbackRecorder
    keys: KeyStore
    metrics: GatewayMetrics
    labels: LabelQueue
    ownership: Ownership
    evidence: EvidenceStore
    promotion: CanaryController
    started_at: float


async def get_services(request: Request) -> Services:
    """The app's services (the one thing kept on app.state)."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_deployment(services: ServicesDep) -> Deployment:
    """What is served and how it changes."""
    return services.deployment


async def get_serving(services: ServicesDep) -> Serving:
    """Completions and chat completions."""
    return services.serving


async def get_recorder(services: ServicesDep) -> FeedbackRecorder:
    """The feedback spool."""
    return services.recorder


async def get_labels(services: ServicesDep) -> LabelQueue:
    """The raters' labelling queue."""
    return services.labels


DeploymentDep = Annotated[Deployment, Depends(get_deployment)]
LabelsDep = Annotated[LabelQueue, Depends(get_labels)]
ServingDep = Annotated[Serving, Depends(get_serving)]
RecorderDep = Annotated[FeedbackRecorder, Depends(get_recorder)]


async def client(request: Request, services: ServicesDep) -> Caller:
    """Any valid key that may generate (user or rater)."""
    caller = services.keys.authenticate(request)
    if caller.role == "admin":
        # The admin credential changes what is deployed; keeping it off the data path means a
        # leaked client key never carries admin rights and the admin key is rarely sent.
        raise APIError(
            403, "The admin key is for /admin routes only; use a client key.", code="wrong_key_role"
        )
    return caller


async def admin(request: Request, services: ServicesDep) -> Caller:
    """The admin credential."""
    caller = services.keys.authenticate(request)
    if caller.role != "admin":
        raise APIError(403, "This route needs the admin key.", code="admin_required")
    return caller


ClientDep = Annotated[Caller, Depends(client)]
