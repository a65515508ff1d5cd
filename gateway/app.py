"""The gateway application: wiring of engine, keys, metrics and routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI

from alignloop.config import Settings
from gateway.auth import KeyStore, load_or_create_keys
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics, HTTPMetricsMiddleware
from feedback.recorder import FeedbackRecorder
from gateway.routers import admin, feedback, health, openai
from gateway.serving import Serving
from inference.engine import PolicyEngine
from gateway.deployment import watch_registry
from inference.registry import PolicyRegistry

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app; the engine starts in the background so /healthz answers at once."""
    registry = PolicyRegistry(settings.registry_dir)
    version = registry.current()
    if version is None:
        raise RuntimeError(f"the registry at {settings.registry_dir} has no current version; "
                           "run `alignloop init-model` (or `alignloop serve`, which does it) first")
    engine = PolicyEngine(registry, settings.engine)
    metrics = GatewayMetrics()
    recorder = FeedbackRecorder(settings.feedback, settings.state_dir, metrics.registry,
                                consumer_groups=(settings.train.loop.group,))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def start() -> None:
            try:
                await engine.start(version)
            except Exception:
                log.exception("engine failed to start on %s; the gateway stays unready", version)
                return
            metrics.ready.set(1)
            metrics.set_version(engine.version)

        starting = asyncio.create_task(start())
        watching = asyncio.create_task(watch_registry(app)) if settings.gateway.registry_poll_s > 0 else None
        yield
        starting.cancel()
        if watching is not None:
            watching.cancel()
        engine.shutdown()
        recorder.close()

    app = FastAPI(title="alignloop gateway", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.keys = KeyStore(load_or_create_keys(settings.gateway.api_keys, settings.state_dir))
    app.state.recorder = recorder
    app.state.serving = Serving(engine, settings.gateway, metrics,
                                recorder if settings.feedback.record_completions else None)
    app.state.history = []  # versions served before the current one, for rollback
    app.state.started_at = time.time()
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(feedback.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics, max_body_bytes=settings.gateway.max_body_bytes)
    return app
