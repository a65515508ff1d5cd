"""The gateway application: builds the services and wires the routers to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI

from core.config import Settings
from feedback.recorder import FeedbackRecorder
from gateway.auth import KeyStore, load_or_create_keys
from gateway.dependencies import Services
from gateway.deployment import Deployment
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.middleware import HTTPMetricsMiddleware
from gateway.routers import admin, feedback, health, openai
from gateway.serving import Serving
from registry.store import PolicyRegistry

log = logging.getLogger(__name__)


def build_services(settings: Settings) -> Services:
    """Everything the routes use, for one gateway process."""
    registry = PolicyRegistry(settings.paths.registry)
    if registry.current() is None:
        raise RuntimeError(f"the registry at {settings.paths.registry} has no current version; "
                           "run `alignloop init-model` (or `alignloop serve`, which does it) first")
    metrics = GatewayMetrics()
    deployment = Deployment(registry, settings.engine, metrics)
    recorder = FeedbackRecorder(settings.feedback, settings.paths.feedback_log, metrics.registry,
                                consumer_groups=(settings.train.loop.group,))
    serving = Serving(deployment.engine, settings.gateway, metrics,
                      recorder if settings.feedback.record_completions else None)
    keys = KeyStore(load_or_create_keys(settings.gateway.api_keys, settings.state_dir))
    return Services(settings, deployment, serving, recorder, keys, metrics, started_at=time.time())


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app; the engine starts in the background so /healthz answers at once."""
    services = build_services(settings)
    deployment = services.deployment

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def start() -> None:
            version = deployment.registry.current()
            try:
                await deployment.start(version)
            except Exception:
                log.exception("engine failed to start on %s; the gateway stays unready", version)

        starting = asyncio.create_task(start())
        poll_s = settings.gateway.registry_poll_s
        watching = asyncio.create_task(deployment.follow_registry(poll_s)) if poll_s > 0 else None
        yield
        starting.cancel()
        if watching is not None:
            watching.cancel()
        deployment.shutdown()
        services.recorder.close()

    app = FastAPI(title="alignloop gateway", lifespan=lifespan)
    app.state.services = services
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(feedback.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.add_middleware(HTTPMetricsMiddleware, metrics=services.metrics, max_body_bytes=settings.gateway.max_body_bytes)
    return app
