"""Which policy version is served: switching (with rollback history), canaries, following the registry."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from inference.engine import Switch
from inference.registry import RegistryError

log = logging.getLogger(__name__)


async def switch_version(app: FastAPI, version: str, mode: str | None = None) -> Switch:
    """Serve `version` from the next request on (swap `mode`, default the configured one), point
    CURRENT at it and keep the history; raises RegistryError (the old version keeps serving) if it
    cannot be loaded."""
    state = app.state
    engine = state.engine
    previous = engine.version
    mode = mode or state.settings.engine.swap_mode
    try:
        switch = await engine.switch_to(version, mode)
        engine.registry.set_current(version)
    except RegistryError:
        state.metrics.swaps.labels("refused").inc()
        raise
    if previous != version:
        state.history.append(previous)
        state.metrics.swaps.labels("ok").inc()
        state.metrics.swap_seconds.labels(switch.method).observe(switch.seconds)
        state.metrics.set_version(version)
        canary = engine.canary
        state.metrics.set_canary(canary.version if canary else None, canary.fraction if canary else 0.0)
    return switch


async def start_canary(app: FastAPI, version: str, fraction: float) -> None:
    """Send a fraction of new requests to `version`; RegistryError if it cannot be loaded."""
    state = app.state
    try:
        await state.engine.start_canary(version, fraction)
    except RegistryError:
        state.metrics.swaps.labels("canary_refused").inc()
        raise
    state.metrics.set_canary(version, fraction)


async def stop_canary(app: FastAPI) -> str | None:
    """Send every request to the serving version again; returns the stopped canary's version."""
    version = await app.state.engine.stop_canary()
    app.state.metrics.set_canary(None)
    return version


async def watch_registry(app: FastAPI) -> None:
    """Follow the registry's CURRENT pointer: whoever moves it (the trainer promoting a version, an
    operator with `alignloop registry set-current`) changes what is served, without a restart."""
    state = app.state
    refused: set[str] = set()
    while True:
        await asyncio.sleep(state.settings.gateway.registry_poll_s)
        engine = state.engine
        try:
            wanted = engine.registry.current()
        except OSError:
            continue
        if not engine.ready or wanted is None or wanted == engine.version or wanted in refused:
            continue
        log.info("registry: CURRENT moved to %s; switching from %s", wanted, engine.version)
        try:
            await switch_version(app, wanted)
        except RegistryError as exc:
            # Keep serving what works; the pointer goes back so the registry tells the truth.
            refused.add(wanted)
            log.error("registry: refusing %s (%s); still serving %s", wanted, exc, engine.version)
            engine.registry.set_current(engine.version)
