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
from inference.engine_stats import EngineStats
from inference.plan import Plan, stream
from inference.sampling import Chunk, Sampling
from inference.vllm_engine import VLLMEngine
from registry.errors import RegistryError
from registry.store import PolicyRegistry

log = logging.getLogger(__name__)

SWAP_MODES = ("in_place", "blue_green")


@dataclass
class Switch:
    """How a switch went: the method used and the seconds until new requests went to the new version."""

    method: str  # "in_place", "blue_green", "canary_promoted" or "none" (already serving it)
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
        self._active: VLLMEngine | None = None
        self._canary: VLLMEngine | None = None
        self._canary_fraction = 0.0
        self._route_rng = random.Random(config.seed)
        self._swap_lock = asyncio.Lock()  # one switch or canary change at a time
        self._retiring: dict[asyncio.Task, VLLMEngine] = {}

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

    def _live(self) -> list[tuple[str, VLLMEngine]]:
        roles = [("serving", self._active), ("canary", self._canary)]
        roles += [("retiring", r) for r in self._retiring.values()]
        return [(role, r) for role, r in roles if r is not None]

    def engines(self) -> list[dict]:
        """Every live engine: the version it holds, its role and its running requests."""
        return [{"version": r.version, "role": role, "in_flight": r.in_flight} for role, r in self._live()]

    def engine_stats(self) -> list[tuple[str, str, EngineStats]]:
        """(version, role, vLLM's statistics) of every live engine, for the engines' metrics."""
        return [(r.version, role, r.stats) for role, r in self._live()]

    async def start(self, version: str) -> None:
        """Build the vLLM engine on a registry version and warm it up."""
        path = self.registry.path(version)
        await asyncio.to_thread(self.registry.verify, version)
        self._active = await VLLMEngine.launch(version, path, self.config)
        self.ready = True

    def _route(self, sticky_key: str | None = None) -> VLLMEngine:
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
        path = self.registry.path(version)
        await asyncio.to_thread(self.registry.verify, version)
        async with self._switching():
            if version == self.version:
                return Switch("none", 0.0)
            started = time.monotonic()
            previous = self.version
            if self._canary is not None and self._canary.version == version:
                # Promote the canary: its engine is already warm.
                old, self._active, self._canary = self._active, self._canary, None
                self._retire(old)
                how = "canary_promoted"
            elif mode == "in_place":
                await self._active.reload(version, path)
                how = "in_place"
            else:
                await self.settled()  # at most two engines of the main traffic at a time
                new = await self._launch_compatible(version)
                old, self._active = self._active, new
                self._retire(old)
                how = "blue_green"
            took = time.monotonic() - started
            log.info("engine: switched %s -> %s (%s) in %.3fs", previous, version, how, took)
            return Switch(how, took)

    async def start_canary(self, version: str, fraction: float) -> None:
        """Send `fraction` of new requests to `version` on an engine of its own."""
        if not 0.0 < fraction < 1.0:
            raise ValueError("a canary fraction is between 0 and 1 (exclusive)")
        await asyncio.to_thread(self.registry.verify, version)
        async with self._switching():
            if version == self.version:
                raise RegistryError(f"{version} is already the serving version")
            if self._canary is not None and self._canary.version == version:
                self._canary_fraction = fraction
                return
            instance = await self._launch_compatible(version)
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

    async def _launch_compatible(self, version: str) -> VLLMEngine:
        path = self.registry.path(version)
        instance = await VLLMEngine.launch(version, path, self.config)
        if instance.tokenizer_fingerprint != self._active.tokenizer_fingerprint:
            await asyncio.to_thread(instance.shutdown)
            raise RegistryError(
                f"{version} has another tokenizer than {self.version}; requests are tokenized "
                "before they are routed, so both must share one (restart the gateway on it)"
            )
        return instance

    def _retire(self, instance: VLLMEngine) -> None:
        # In the background: the switch is done once new requests go elsewhere; the old engine
        # finishes what it has (at most max_tokens per request) and then gives its memory back.
        task = asyncio.create_task(instance.retire(self.config.drain_timeout_s))
        self._retiring[task] = instance
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def settled(self) -> None:
        """Wait until every engine taken out of service has been shut down."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)
            await asyncio.sleep(0)  # let the done-callbacks run

    def shutdown(self) -> None:
        """Stop every engine's worker processes."""
        for task in list(self._retiring):
            task.cancel()
        for instance in (self._active, self._canary, *self._retiring.values()):
            if instance is not None:
                instance.shutdown()
        self._active = self._canary = None
        self.ready = False
