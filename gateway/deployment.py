"""Which policy version is served: switching (with rollback history) and following the registry."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from inference.registry import RegistryError

log = logging.getLogger(__name__)


async def switch_version(app: FastAPI, version: str) -> float:
    """Serve `version` from the next request on, point CURRENT at it and keep the history; raises
    RegistryError (the old version keeps serving) if it cannot be loaded."""
    state = app.state
    engine = state.engine
    previous = engine.version
    try:
        seconds = await engine.switch_to(version)
        engine.registry.set_current(version)
    except RegistryError:
        state.metrics.swaps.labels("refused").inc()
        raise
    if previous != version:
        state.history.append(previous)
        state.metrics.swaps.labels("ok").inc()
        state.metrics.swap_seconds.observe(seconds)
        state.metrics.set_version(version)
    return seconds


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
