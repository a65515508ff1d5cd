"""The serving engine: which vLLM engine answers a request, and switching between policy versions.

Two switch modes (``engine.swap_mode``, or per call):

- ``in_place``: one engine; new requests wait while the running ones finish, the weights are
  reloaded in the same engine (well under a second for small models), then the queue goes on.
  Needs no extra memory; needs the same architecture.
- ``blue_green``: a second engine is started on the new version beside the serving one (tens of
  seconds, during which the old one keeps serving at full speed, minus the CPU or GPU the start
  takes). New requests then go to the new engine; the old one finishes its running requests and
  is shut down. Needs memory for two engines for a while; allows another architecture as long as
  the tokenizer is the same (prompts are tokenized before a request is routed).

A canary is a second engine on a candidate version that takes a fraction of the requests; every
response and every feedback event names the version that served it. Promoting the canary's version
makes its engine the serving one without starting anything.

A LoRA adapter version is served by the engine holding its base (inference/adapters.py): a canary
of an adapter is a second adapter on the serving engine, and switching to an adapter of the loaded
base (``adapter``) only changes which adapter new requests name. An engine is started with LoRA
support for that (engine.enable_lora); the first adapter of a base no engine holds so starts one
as blue/green would, or reloads the serving engine's weights in place when it can hold adapters.

What serves a version is a route: the engine itself (full weights) or an AdapterRoute on it.

This module is longer than the others on purpose: which route serves, which is the canary and
which engines retire is one state, changed under one lock by every switch; split over modules,
the invariants (at most two engines of the main traffic, an engine retires only once no route uses
it, a reload stops the canary's adapter on it) would have no single place to be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from core.config import EngineConfig
from inference.adapters import AdapterRoute
from inference.engine_stats import EngineStats
from inference.plan import Plan, stream
from inference.sampling import Chunk, Sampling
from inference.vllm_engine import VLLMEngine
from registry.errors import RegistryError
from registry.store import PolicyRegistry, VersionInfo

log = logging.getLogger(__name__)

SWAP_MODES = ("in_place", "blue_green")

Route = VLLMEngine | AdapterRoute  # what serves one version: an engine, or an adapter on one


@dataclass
class Switch:
    """How a switch went: the method used and the seconds until new requests went to the new version."""

    method: str  # "in_place", "blue_green", "adapter", "canary_promoted" or "none" (already serving it)
    seconds: float


class SwapBusy(Exception):
    """Another switch holds the engines for longer than a caller may wait."""


@dataclass(frozen=True)
class Canary:
    """A candidate version taking a fraction of the traffic."""

    version: str
    fraction: float


def _unit_hash(key: str) -> float:
    """A stable number in [0, 1) for key."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(16**12)


class PolicyEngine:
    """Serves the current policy version (and optionally a canary) and switches versions."""

    def __init__(self, registry: PolicyRegistry, config: EngineConfig):
        self.registry = registry
        self.config = config
        self.max_model_len = config.max_model_len
        self.ready = False
        self._active: Route | None = None
        self._canary: Route | None = None
        self._canary_fraction = 0.0
        self._route_rng = random.Random(config.seed)
        self._swap_lock = asyncio.Lock()  # one switch or canary change at a time
        self._retiring: dict[asyncio.Task, VLLMEngine] = {}
        self._unloading: set[asyncio.Task] = set()  # adapters waiting for their requests to finish
        self.adapter_loaded: list[float] = []  # load seconds of adapters loaded since last taken

    @property
    def version(self) -> str | None:
        """The version serving the main traffic."""
        return self._active.version if self._active else None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The serving version's tokenizer (a canary's is the same by construction)."""
        return self._active.tokenizer if self._active else None

    @property
    def canary(self) -> Canary | None:
        """The candidate taking a share of the traffic, if any."""
        return Canary(self._canary.version, self._canary_fraction) if self._canary else None

    def _routes(self) -> list[tuple[str, Route]]:
        return [
            (role, r) for role, r in (("serving", self._active), ("canary", self._canary)) if r is not None
        ]

    def _live(self) -> list[tuple[str, VLLMEngine]]:
        live: list[tuple[str, VLLMEngine]] = []
        for role, route in self._routes():
            if all(route.engine is not e for _, e in live):  # two adapters of one engine: one engine
                live.append((role, route.engine))
        return live + [("retiring", r) for r in self._retiring.values()]

    def engines(self) -> list[dict]:
        """Every live engine: the version whose weights it holds, its role, its running requests,
        and the adapter versions it serves ({version: role})."""
        return [
            {
                "version": e.version,
                "role": role,
                "in_flight": e.in_flight,
                "adapters": {
                    r.version: rrole
                    for rrole, r in self._routes()
                    if isinstance(r, AdapterRoute) and r.engine is e
                },
            }
            for role, e in self._live()
        ]

    def engine_ids(self) -> frozenset[int]:
        """Identities of the engines routed to: unchanged by a switch or canary between adapters."""
        return frozenset(id(r.engine) for _, r in self._routes())

    def adapters(self) -> int:
        """How many adapter versions are routed to now."""
        return sum(isinstance(r, AdapterRoute) for _, r in self._routes())

    def engine_stats(self) -> list[tuple[str, str, EngineStats]]:
        """(version, role, vLLM's statistics) of every live engine, for the engines' metrics."""
        return [(r.version, role, r.stats) for role, r in self._live()]

    async def start(self, version: str) -> None:
        """Build the vLLM engine on a registry version (an adapter's: on its base) and warm it up."""
        info = self.registry.info(version)
        await asyncio.to_thread(self.registry.verify, version)
        weights = info.base or version
        if info.base is not None:
            await asyncio.to_thread(self.registry.verify, info.base)
        rank = self._lora_rank(weights, at_least=info.lora_rank or 0)
        engine = await VLLMEngine.launch(weights, self.registry.path(weights), self.config, rank)
        try:
            self._active = await self._load_adapter(engine, info) if info.is_adapter else engine
        except BaseException:
            await asyncio.to_thread(engine.shutdown)
            raise
        self.ready = True

    def _lora_rank(self, weights: str, at_least: int = 0) -> int | None:
        """The adapter rank an engine on `weights` is started for, or None to start it without LoRA."""
        if self.config.enable_lora is False:
            if at_least:
                raise RegistryError("adapter versions are not served: engine.enable_lora is false")
            return None
        ranks = [at_least]
        for name in self.registry.names():
            with contextlib.suppress(Exception):  # an unreadable version is refused when it is used
                info = self.registry.info(name)
                if info.base == weights and info.lora_rank:
                    ranks.append(info.lora_rank)
        if not self.config.enable_lora and max(ranks) == 0:
            return None
        return max(self.config.max_lora_rank, *ranks)

    async def _load_adapter(self, engine: VLLMEngine, info: VersionInfo) -> AdapterRoute:
        route = await AdapterRoute.load(engine, info.name, self.registry.path(info.name), info.lora_rank or 0)
        log.info("engine: adapter %s loaded on %s in %.3fs", info.name, engine.version, route.load_seconds)
        self.adapter_loaded.append(route.load_seconds)
        return route

    async def _adapter_route(
        self, info: VersionInfo, reload_allowed: bool, settle: bool = False
    ) -> tuple[AdapterRoute, str]:
        """A route to an adapter version: on the serving engine when it holds the adapter's base with
        LoRA support, else (reload_allowed) on it after reloading the base in place, else on an engine
        started for it (once retiring engines are gone, if `settle`). Returns (route, how)."""
        assert info.base is not None
        await asyncio.to_thread(self.registry.verify, info.base)
        engine = self._active.engine
        rank = info.lora_rank or 0
        fits = engine.max_lora_rank is not None and engine.max_lora_rank >= rank
        if engine.version == info.base and fits:
            return await self._load_adapter(engine, info), "adapter"
        if reload_allowed and fits:
            previous = engine.version
            await self._reload(engine, info.base)
            try:
                return await self._load_adapter(engine, info), "in_place"
            except BaseException:
                await engine.reload(previous, self.registry.path(previous))  # serve what was served
                raise
        if settle:
            await self.settled()  # at most two engines of the main traffic at a time
        started = await self._launch_compatible(info.base, self._lora_rank(info.base, at_least=rank))
        try:
            return await self._load_adapter(started, info), "blue_green"
        except BaseException:
            await asyncio.to_thread(started.shutdown)
            raise

    async def _reload(self, engine: VLLMEngine, version: str) -> None:
        # A canary's adapter on this engine was made for the weights about to go: it stops first.
        if self._canary is not None and self._canary.engine is engine:
            log.warning(
                "engine: stopping the canary %s: its engine reloads its weights", self._canary.version
            )
            old, self._canary = self._canary, None
            self._retire(old)
        await engine.reload(version, self.registry.path(version))

    def _route(self, sticky_key: str | None = None) -> Route:
        if self._canary is None:
            return self._active
        # Sticky: one user's requests all go to one version for the whole canary (a user who saw
        # the candidate once and the old version next would compare the two, not judge one), and a
        # new canary draws its users afresh.
        draw = (
            _unit_hash(f"{self._canary.version}:{sticky_key}")
            if sticky_key is not None
            else self._route_rng.random()
        )
        return self._canary if draw < self._canary_fraction else self._active

    def plan(self, n: int, sticky_key: str | None = None, compare: bool = False) -> Plan:
        """Which version writes each of a request's n candidates: all from one engine (the sticky
        route), or, when `compare` and a canary runs and n >= 2, half from each version in shuffled
        positions, so a ranking of them compares the versions blind."""
        if not compare or self._canary is None or n < 2:
            instance = self._route(sticky_key=sticky_key)
            return Plan([instance.version] * n, [(instance, list(range(n)))])
        slots = list(range(n))
        self._route_rng.shuffle(slots)
        half = n // 2
        parts = [(self._canary, sorted(slots[:half])), (self._active, sorted(slots[half:]))]
        versions = [""] * n
        for instance, where in parts:
            for i in where:
                versions[i] = instance.version
        return Plan(versions, parts)

    async def run(
        self, plan: Plan, prompt_token_ids: list[int], sampling: Sampling, request_id: str | None = None
    ) -> AsyncIterator[Chunk]:
        """Stream a plan's candidates (chunk indices are the request's), interleaved as they come."""
        async with contextlib.aclosing(stream(plan, prompt_token_ids, sampling, request_id)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def switch_to(self, version: str, mode: str | None = None) -> Switch:
        """Serve another registry version from the next request on.

        Refuses (RegistryError) a checkpoint that is invalid or cannot be loaded; the current version
        then keeps serving."""
        mode = mode or self.config.swap_mode
        if mode not in SWAP_MODES:
            raise ValueError(f"unknown swap mode {mode!r}; use one of {SWAP_MODES}")
        info = self.registry.info(version)
        await asyncio.to_thread(self.registry.verify, version)
        async with self._switching():
            if version == self.version:
                return Switch("none", 0.0)
            started = time.monotonic()
            previous = self.version
            old = self._active
            if self._canary is not None and self._canary.version == version:
                # Promote the canary: its engine (or adapter) is already warm.
                self._active, self._canary = self._canary, None
                how = "canary_promoted"
            elif not info.is_adapter and old.engine.version == version:
                self._active, how = old.engine, "adapter"  # from an adapter back to its base's weights
            elif info.is_adapter:
                in_place = mode == "in_place"
                self._active, how = await self._adapter_route(
                    info, reload_allowed=in_place, settle=not in_place
                )
            elif mode == "in_place":
                await self._reload(old.engine, version)
                self._active = old.engine
                how = "in_place"
            else:
                await self.settled()  # at most two engines of the main traffic at a time
                self._active = await self._launch_compatible(version, self._lora_rank(version))
                how = "blue_green"
            if old is not self._active:
                self._retire(old)
            took = time.monotonic() - started
            log.info("engine: switched %s -> %s (%s) in %.3fs", previous, version, how, took)
            return Switch(how, took)

    async def start_canary(self, version: str, fraction: float) -> None:
        """Send `fraction` of new requests to `version` on an engine of its own."""
        if not 0.0 < fraction < 1.0:
            raise ValueError("a canary fraction is between 0 and 1 (exclusive)")
        info = self.registry.info(version)
        await asyncio.to_thread(self.registry.verify, version)
        async with self._switching():
            if version == self.version:
                raise RegistryError(f"{version} is already the serving version")
            if self._canary is not None and self._canary.version == version:
                self._canary_fraction = fraction
                return
            instance: Route
            if not info.is_adapter and self._active.engine.version == version:
                instance = self._active.engine  # the weights the serving adapter sits on
            elif info.is_adapter:
                instance, _ = await self._adapter_route(info, reload_allowed=False)
            else:
                instance = await self._launch_compatible(version, self._lora_rank(version))
            old, self._canary, self._canary_fraction = self._canary, instance, fraction
            if old is not None:
                self._retire(old)
            log.info("engine: canary %s takes %.0f%% of new requests", version, 100 * fraction)

    async def stop_canary(self) -> str | None:
        """Send all traffic to the serving version again; returns the canary's version."""
        async with self._switching():
            old, self._canary = self._canary, None
            if old is None:
                return None
            self._retire(old)
            log.info("engine: canary %s stopped", old.version)
            return old.version

    @contextlib.asynccontextmanager
    async def _switching(self):
        """The swap lock, waited for at most engine.swap_wait_s (then SwapBusy): nobody waits forever
        behind a switch."""
        try:
            await asyncio.wait_for(self._swap_lock.acquire(), self.config.swap_wait_s)
        except TimeoutError:
            raise SwapBusy(
                f"another switch has held the engines for over {self.config.swap_wait_s:g}s"
            ) from None
        try:
            yield
        finally:
            self._swap_lock.release()

    async def _launch_compatible(self, version: str, lora_rank: int | None) -> VLLMEngine:
        path = self.registry.path(version)
        instance = await VLLMEngine.launch(version, path, self.config, lora_rank)
        if instance.tokenizer_fingerprint != self._active.engine.tokenizer_fingerprint:
            await asyncio.to_thread(instance.shutdown)
            raise RegistryError(
                f"{version} has another tokenizer than {self.version}; requests are tokenized "
                "before they are routed, so both must share one (restart the gateway on it)"
            )
        return instance

    def _retire(self, route: Route) -> None:
        # In the background: the switch is done once new requests go elsewhere; the old route
        # finishes what it has (at most max_tokens per request). An adapter is then unloaded; an
        # engine that no route uses any more gives its memory back.
        if isinstance(route, AdapterRoute):
            unload = asyncio.create_task(route.retire(self.config.drain_timeout_s))
            self._unloading.add(unload)
            unload.add_done_callback(self._unloading.discard)
        engine = route.engine
        if any(r.engine is engine for _, r in self._routes()) or engine in self._retiring.values():
            return
        task = asyncio.create_task(engine.retire(self.config.drain_timeout_s))
        self._retiring[task] = engine
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def settled(self) -> None:
        """Wait until every engine and adapter taken out of service has been let go."""
        while self._retiring or self._unloading:
            await asyncio.gather(*self._retiring, *self._unloading, return_exceptions=True)
            await asyncio.sleep(0)  # let the done-callbacks run

    def shutdown(self) -> None:
        """Stop every engine's worker processes."""
        for task in [*self._retiring, *self._unloading]:
            task.cancel()
        for route in (self._active, self._canary, *self._retiring.values()):
            if route is not None:
                route.engine.shutdown()
        self._active = self._canary = None
        self.ready = False
