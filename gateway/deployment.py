"""What the gateway serves and how it changes: switching (with a rollback history), canaries, and
following the registry's CURRENT pointer. The one place the deployment state lives."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from core.config import EngineConfig
from core.supervision import supervise
from gateway import heap
from gateway.metrics import GatewayMetrics
from inference.engine import PolicyEngine, SwapBusy, Switch
from registry.errors import RegistryError, UnknownVersion
from registry.store import PolicyRegistry

log = logging.getLogger(__name__)


class NothingToRollBack(Exception):
    """No earlier version was served."""


class Deployment:
    """The engine, the registry it serves from, the versions served before, and the swap metrics."""

    def __init__(
        self,
        registry: PolicyRegistry,
        engine_config: EngineConfig,
        metrics: GatewayMetrics,
        last_served: Path | None = None,
    ):
        self.registry = registry
        self.engine = PolicyEngine(registry, engine_config)
        self.swap_mode = engine_config.swap_mode
        self.metrics = metrics
        self.history: list[str] = []  # versions served before the current one, oldest first
        self._last_served = last_served
        self.start_error: str | None = None  # why CURRENT could not be started, if it could not
        self.starting = False
        self._deployed: set[str] = set()  # versions whose feedback-to-deployment time was observed

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
        self.start_error = None
        self.metrics.ready.set(1)
        self.metrics.set_version(version)
        self._show_adapters()
        self._remember(version)
        heap.settle(self.metrics.heap_frozen)

    def _show_adapters(self) -> None:
        self.metrics.adapters_loaded.set(self.engine.adapters())
        while self.engine.adapter_loaded:
            self.metrics.adapter_load_seconds.observe(self.engine.adapter_loaded.pop())

    def _settle_if_engines_changed(self, before: frozenset[int]) -> None:
        # A full collection stalls the event loop (~0.6 s here): worth it only when an engine came or
        # went, not for a switch between adapters of one engine.
        if self.engine.engine_ids() != before:
            heap.settle(self.metrics.heap_frozen)

    async def start_with_fallback(self, wanted: str | None) -> None:
        """Start on CURRENT; if it cannot be served (a corrupt or unloadable version), start on the
        version this gateway served last and point CURRENT back at it (only if nobody moved it
        meanwhile). With neither, stay unready and say why; POST /admin/policy can still pick one."""
        fallback = (
            self._last_served.read_text().strip()
            if self._last_served and self._last_served.exists()
            else None
        )
        self.starting = True
        try:
            await self._start_first_that_loads(wanted, fallback)
        finally:
            self.starting = False

    async def _start_first_that_loads(self, wanted: str | None, fallback: str | None) -> None:
        for version in dict.fromkeys(v for v in (wanted, fallback) if v):
            refusal = self.start_error
            try:
                await self.start(version)
            except Exception as exc:  # any failure to load is a refusal of that version, not the end
                self.start_error = f"{version}: {type(exc).__name__}: {exc}"[:500]
                self.metrics.swaps.labels("refused").inc()
                log.exception("engine failed to start on %s", version)
                continue
            if version != wanted:
                self.start_error = refusal  # serving, but say why CURRENT could not be
                log.error(
                    "registry: CURRENT (%s) cannot be served; serving %s, the last version served",
                    wanted,
                    version,
                )
                self.registry.compare_and_set_current(wanted, version)
            return
        log.error(
            "no version could be started (%s); the gateway stays unready until POST /admin/policy picks one",
            self.start_error,
        )

    def _remember(self, version: str) -> None:
        if self._last_served is not None:
            self._last_served.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._last_served.with_suffix(".tmp")
            tmp.write_text(version + "\n")
            tmp.replace(self._last_served)

    async def switch(self, version: str, mode: str | None = None, *, remember: bool = True) -> Switch:
        """Serve `version` from the next request on (swap `mode`, default the configured one), point
        CURRENT at it and (if `remember`) keep the version left in the history; raises RegistryError
        (the old version keeps serving) if it cannot be loaded."""
        previous = self.engine.version
        if previous is None:  # nothing runs (it failed to start): this picks what to start on
            self.registry.path(version)  # UnknownVersion for names that are not versions
            await self.start(version)
            self.registry.set_current(version)
            return Switch("started", 0.0)
        engines = self.engine.engine_ids()
        try:
            switch = await self.engine.switch_to(version, mode or self.swap_mode)
            self.registry.set_current(version)
        except RegistryError:
            self.metrics.swaps.labels("refused").inc()
            self._show_adapters()
            raise
        if previous != version:
            if remember:
                self.history.append(previous)
            self.metrics.swaps.labels("ok").inc()
            self.metrics.swap_seconds.labels(switch.method).observe(switch.seconds)
            self.metrics.set_version(version)
            self._show_canary()
            self._remember(version)
            self._observe_feedback_to_deployment(version)
            self._settle_if_engines_changed(engines)
        return switch

    def _observe_feedback_to_deployment(self, version: str) -> None:
        # The trainer keeps when the oldest comparison new to the round was given; the clock stops
        # when the version it trained serves all traffic (directly or after its canary).
        if version in self._deployed:
            return
        self._deployed.add(version)
        first = self.registry.info(version).extra.get("data", {}).get("first_new_comparison_at")
        if first:
            self.metrics.feedback_to_deployment.observe(max(0.0, time.time() - first))

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
        engines = self.engine.engine_ids()
        try:
            await self.engine.start_canary(version, fraction)
        except RegistryError:
            self.metrics.swaps.labels("canary_refused").inc()
            raise
        self._show_canary()
        self._settle_if_engines_changed(engines)

    async def stop_canary(self) -> str | None:
        """Send every request to the serving version again; returns the stopped canary's version."""
        engines = self.engine.engine_ids()
        version = await self.engine.stop_canary()
        self._show_canary()
        self._settle_if_engines_changed(engines)
        return version

    def _show_canary(self) -> None:
        canary = self.engine.canary
        self.metrics.set_canary(canary.version if canary else None, canary.fraction if canary else 0.0)
        self._show_adapters()

    async def follow_registry(self, poll_s: float) -> None:
        """Follow the registry's CURRENT pointer: whoever moves it (the trainer promoting a version, an
        operator with `alignloop registry set-current`) changes what is served, without a restart.
        Supervised: a failure is logged, counted and the watching goes on."""
        refused: dict[str, int] = {}  # version -> the CURRENT write it was refused for

        async def watch() -> None:
            while True:
                await asyncio.sleep(poll_s)
                await self._follow_once(refused)

        await supervise(
            "registry-watcher", watch, lambda task: self.metrics.background_failures.labels(task).inc()
        )

    async def _follow_once(self, refused: dict[str, int]) -> None:
        try:
            wanted, stamp = self.registry.current_stamp()
        except OSError:
            return
        # A refused version is tried again only when CURRENT is written again (a new promotion).
        if not self.ready or wanted is None or wanted == self.version or refused.get(wanted) == stamp:
            return
        log.info("registry: CURRENT moved to %s; switching from %s", wanted, self.version)
        try:
            await self.switch(wanted)
        except SwapBusy:
            return  # an admin switch is running: look again at the next poll
        except Exception as exc:  # corrupt, unloadable, another tokenizer, a name that is no version...
            refused[wanted] = stamp
            if not isinstance(exc, RegistryError | UnknownVersion):
                self.metrics.swaps.labels("refused").inc()
            log.error(
                "registry: refusing %s (%s: %s); still serving %s",
                wanted,
                type(exc).__name__,
                exc,
                self.version,
            )
            # Keep serving what works; the pointer goes back so the registry tells the truth, unless
            # somebody moved it again meanwhile (a newer promotion must not be undone).
            if not self.registry.compare_and_set_current(wanted, self.version):
                log.info("registry: CURRENT moved on while %s was refused; following it", wanted)

    def shutdown(self) -> None:
        """Stop every engine."""
        self.engine.shutdown()
