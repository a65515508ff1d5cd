"""What the gateway serves and how it changes: switching (with a rollback history), canaries, and
following the registry's CURRENT pointer. The one place the deployment state lives."""

from __future__ import annotations

import asyncio
import logging

from core.config import EngineConfig
from gateway.metrics import GatewayMetrics
from inference.engine import PolicyEngine, Switch
from registry.errors import RegistryError
from registry.store import PolicyRegistry

log = logging.getLogger(__name__)


class NothingToRollBack(Exception):
    """No earlier version was served."""


class Deployment:
    """The engine, the registry it serves from, the versions served before, and the swap metrics."""

    def __init__(self, registry: PolicyRegistry, engine_config: EngineConfig, metrics: GatewayMetrics):
        self.registry = registry
        self.engine = PolicyEngine(registry, engine_config)
        self.swap_mode = engine_config.swap_mode
        self.metrics = metrics
        self.history: list[str] = []  # versions served before the current one, oldest first

    @property
    def ready(self) -> bool:
        """Whether the engine has warmed up."""
        return self.engine.ready

    @property
    def version(self) -> str | None:
        """The version serving the main traffic."""
        return self.engine.version

    async def start(self, version: str) -> None:
        """Start the engine on a version; the gateway is ready once this returns."""
        await self.engine.start(version)
        self.metrics.ready.set(1)
        self.metrics.set_version(version)

    async def switch(self, version: str, mode: str | None = None, *, remember: bool = True) -> Switch:
        """Serve `version` from the next request on (swap `mode`, default the configured one), point
        CURRENT at it and (if `remember`) keep the version left in the history; raises RegistryError
        (the old version keeps serving) if it cannot be loaded."""
        previous = self.engine.version
        try:
            switch = await self.engine.switch_to(version, mode or self.swap_mode)
            self.registry.set_current(version)
        except RegistryError:
            self.metrics.swaps.labels("refused").inc()
            raise
        if previous != version:
            if remember:
                self.history.append(previous)
            self.metrics.swaps.labels("ok").inc()
            self.metrics.swap_seconds.labels(switch.method).observe(switch.seconds)
            self.metrics.set_version(version)
            self._show_canary()
        return switch

    async def rollback(self) -> tuple[str, Switch]:
        """Back to the version served before the last switch; the history entry is used up only
        once the switch succeeded. Returns (version, switch)."""
        if not self.history:
            raise NothingToRollBack()
        target = self.history[-1]
        switch = await self.switch(target, remember=False)
        self.history.pop()
        return target, switch

    async def start_canary(self, version: str, fraction: float) -> None:
        """Send a fraction of new requests to `version`; RegistryError if it cannot be loaded."""
        try:
            await self.engine.start_canary(version, fraction)
        except RegistryError:
            self.metrics.swaps.labels("canary_refused").inc()
            raise
        self._show_canary()

    async def stop_canary(self) -> str | None:
        """Send every request to the serving version again; returns the stopped canary's version."""
        version = await self.engine.stop_canary()
        self._show_canary()
        return version

    def _show_canary(self) -> None:
        canary = self.engine.canary
        self.metrics.set_canary(canary.version if canary else None, canary.fraction if canary else 0.0)

    async def follow_registry(self, poll_s: float) -> None:
        """Follow the registry's CURRENT pointer: whoever moves it (the trainer promoting a version, an
        operator with `alignloop registry set-current`) changes what is served, without a restart."""
        refused: set[str] = set()
        while True:
            await asyncio.sleep(poll_s)
            try:
                wanted = self.registry.current()
            except OSError:
                continue
            if not self.ready or wanted is None or wanted == self.version or wanted in refused:
                continue
            log.info("registry: CURRENT moved to %s; switching from %s", wanted, self.version)
            try:
                await self.switch(wanted)
            except RegistryError as exc:
                # Keep serving what works; the pointer goes back so the registry tells the truth.
                refused.add(wanted)
                log.error("registry: refusing %s (%s); still serving %s", wanted, exc, self.version)
                self.registry.set_current(self.version)

    def shutdown(self) -> None:
        """Stop every engine."""
        self.engine.shutdown()
