"""The gateway application: builds the services and wires the routers to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from core.config import Settings
from core.supervision import supervise
from feedback import topics
from feedback.recorder import FeedbackRecorder
from gateway.auth import KeyStore, load_or_create_keys
from gateway.canary import CanaryController
from gateway.dependencies import Services
from gateway.deployment import Deployment
from gateway.errors import SafeJSONResponse, install_error_handlers
from gateway.feedback_fast_path import FeedbackFastPath, single_event_routes
from gateway.heap import PauseClock
from gateway.label_filler import fill_forever
from gateway.loop_watch import watch_loop
from gateway.metrics import GatewayMetrics
from gateway.middleware import HTTPMetricsMiddleware
from gateway.ownership import Ownership, load_or_create_secrets
from gateway.routers import admin, feedback, health, labelling, openai
from gateway.serving import Serving
from inference.engine_stats import EngineMetrics
from promotion.evidence import EvidenceStore
from promotion.evidence_feed import EvidenceFeed
from promotion.labelling import LabelQueue
from promotion.version_health import VersionHealth
from registry.store import PolicyRegistry

log = logging.getLogger(__name__)
UI_DIR = Path(__file__).parent / "ui"


def build_services(settings: Settings) -> Services:
    """Everything the routes use, for one gateway process."""
    registry = PolicyRegistry(settings.paths.registry)
    if registry.current() is None:
        raise RuntimeError(
            f"the registry at {settings.paths.registry} has no current version; "
            "run `alignloop init-model` (or `alignloop serve`, which does it) first"
        )
    metrics = GatewayMetrics()
    deployment = Deployment(registry, settings.engine, metrics, settings.paths.last_served)
    metrics.registry.register(EngineMetrics(deployment.engine.engine_stats))  # vLLM's own, per engine
    evidence = EvidenceStore(settings.paths.evidence)
    # Embedded, the log keeps events until both the trainer and this gateway's evidence feed read them.
    recorder = FeedbackRecorder(
        settings.feedback,
        settings.paths.feedback_log,
        metrics.registry,
        consumer_groups={
            settings.train.loop.group: topics.ALL,
            evidence.consumer_group(): (topics.FEEDBACK,),
        },
        on_failure=lambda task: metrics.background_failures.labels(task).inc(),
    )
    keys = KeyStore(
        load_or_create_keys(settings.gateway.api_keys, settings.state_dir),
        settings.gateway.failed_auth_per_minute,
    )
    labels = LabelQueue(settings.paths.labels, settings.gateway.labelling)
    # Feedback is accepted on ids younger than the idempotency window, as before ids were signed.
    ownership = Ownership(
        load_or_create_secrets(settings.gateway.ownership_secrets, settings.paths.ownership_secret),
        retention_s=settings.feedback.index_retention_days * 86400,
    )
    health = VersionHealth()
    serving = Serving(
        deployment.engine,
        settings.gateway,
        metrics,
        keys,
        ownership,
        recorder if settings.feedback.record_completions else None,
        labels,
        health,
    )
    promotion = CanaryController(deployment, evidence, health, settings.promotion)
    return Services(
        settings,
        deployment,
        serving,
        recorder,
        keys,
        metrics,
        labels,
        ownership,
        evidence,
        promotion,
        started_at=time.time(),
    )


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app; the engine starts in the background so /healthz answers at once."""
    services = build_services(settings)
    deployment = services.deployment

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        starting = asyncio.create_task(deployment.start_with_fallback(deployment.registry.current()))
        poll_s = settings.gateway.registry_poll_s
        watching = asyncio.create_task(deployment.follow_registry(poll_s)) if poll_s > 0 else None
        filling = asyncio.create_task(
            supervise(
                "label-filler",
                lambda: fill_forever(
                    services.labels,
                    deployment.engine,
                    services.recorder,
                    services.ownership,
                    settings.gateway.labelling,
                    services.metrics,
                    services.evidence,
                ),
                on_failure=lambda task: services.metrics.background_failures.labels(task).inc(),
            )
        )
        evidence_feed = EvidenceFeed(
            services.evidence,
            settings.feedback,
            settings.state_dir,
            on_kept=services.metrics.evidence_kept.inc,
            on_failure=services.metrics.background_failures.labels("evidence-feed").inc,
        ).start()
        lag = asyncio.create_task(watch_loop(services.metrics.loop_lag))
        gc_pauses = asyncio.create_task(PauseClock().report(services.metrics.gc_pauses))
        # direct: the trainer moves CURRENT itself and nothing here decides.
        deciding = (
            asyncio.create_task(services.promotion.run()) if settings.promotion.mode == "canary" else None
        )
        yield
        if deciding is not None:
            deciding.cancel()
            services.promotion.lease.release()
        evidence_feed.stop()
        starting.cancel()
        filling.cancel()
        lag.cancel()
        gc_pauses.cancel()
        if watching is not None:
            watching.cancel()
        deployment.shutdown()
        services.recorder.close()

    app = FastAPI(title="alignloop gateway", lifespan=lifespan, default_response_class=SafeJSONResponse)
    app.state.services = services
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(openai.vllm_router)
    app.include_router(feedback.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(labelling.router)
    # The ranking page: static files, same origin as the API it calls, nothing fetched from elsewhere.
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    # Added first, so it runs inside the metrics middleware: its requests are counted and bounded the same.
    app.add_middleware(FeedbackFastPath, routes=single_event_routes(app))
    app.add_middleware(
        HTTPMetricsMiddleware, metrics=services.metrics, max_body_bytes=settings.gateway.max_body_bytes
    )
    return app
