"""One vLLM engine (AsyncLLM, in process) serving one policy version, with in-place weight reload,
and, when started with LoRA support, the adapter versions on that version (inference/adapters.py).

A weight reload must fail no request and must never let a request be served partly by one version
and partly by another. Requests therefore hold a shared lease on the weights while the engine
works on them; a reload takes the lease exclusively: it stops new requests from starting, waits
for the running ones to finish, reloads the weights in place and lets the queue go again. Every
output is tagged with the version that held the lease, so the label is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.config import EngineConfig
from inference.engine_stats import EngineStats
from inference.sampling import Chunk, Sampling
from inference.vllm_args import engine_kwargs, start_async_llm
from registry.errors import RegistryError
from registry.fingerprint import arch_fingerprint, tokenizer_fingerprint

log = logging.getLogger(__name__)


class _SwapGate:
    """Many requests may hold the weights at once; a reload holds them alone. A waiting reload
    blocks new requests so that it cannot be starved by a steady stream of them."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._holders = 0
        self._swapping = False

    async def acquire_shared(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._swapping)
            self._holders += 1

    async def release_shared(self) -> None:
        async with self._cond:
            self._holders -= 1
            self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self):
        async with self._cond:
            await self._cond.wait_for(lambda: not self._swapping)
            self._swapping = True
            await self._cond.wait_for(lambda: self._holders == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._swapping = False
                self._cond.notify_all()


def vllm_params(sampling: Sampling):
    """vLLM's SamplingParams for our Sampling: streaming deltas, or only each candidate's final output."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=sampling.n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        stop=list(sampling.stop) or None,
        seed=sampling.seed,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        logprobs=sampling.logprobs,
        ignore_eos=sampling.ignore_eos,
        top_k=sampling.top_k,
        min_p=sampling.min_p,
        repetition_penalty=sampling.repetition_penalty,
        min_tokens=sampling.min_tokens,
        stop_token_ids=list(sampling.stop_token_ids) or None,
        include_stop_str_in_output=sampling.include_stop_str_in_output,
        skip_special_tokens=sampling.skip_special_tokens,
        spaces_between_special_tokens=sampling.spaces_between_special_tokens,
        output_kind=RequestOutputKind.FINAL_ONLY if sampling.final_only else RequestOutputKind.DELTA,
    )


def _first_token_at(out) -> float | None:
    """When the engine made a request's first token (wall clock), from vLLM's request stats: a
    final-only output arrives long after it."""
    stats = getattr(out, "metrics", None)
    if stats is None or not getattr(stats, "first_token_latency", 0.0):
        return None
    return stats.arrival_time + stats.first_token_latency


def _engine_timings(out, steps: int) -> tuple[float | None, float | None]:
    """(prefill, time per decoding step) of a finished request from vLLM's request stats (engine-core
    clock): what the version's engine took, not how long the request queued or its client read."""
    stats = getattr(out, "metrics", None)
    scheduled, first, last = (
        getattr(stats, k, 0.0) for k in ("scheduled_ts", "first_token_ts", "last_token_ts")
    )
    prefill = first - scheduled if scheduled and first >= scheduled else None
    step = (last - first) / (steps - 1) if first and last > first and steps > 1 else None
    return prefill, step


# The ranks vLLM accepts as max_lora_rank.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_bucket(rank: int) -> int:
    """The least max_lora_rank vLLM accepts that holds adapters of `rank`."""
    for bucket in _LORA_RANKS:
        if bucket >= rank:
            return bucket
    raise RegistryError(f"a LoRA rank of {rank} is above the {_LORA_RANKS[-1]} vLLM serves")


@dataclass(frozen=True)
class LoRA:
    """An adapter loaded on an engine: vLLM's LoRARequest, for the weights of one weights_epoch."""

    request: Any  # vLLM's LoRARequest; its lora_name is the adapter's version
    epoch: int


class VLLMEngine:
    """One started vLLM engine (AsyncLLM) and the version it serves; counts the requests it is working on."""

    def __init__(self, llm, version: str, path: Path, tokenizer: PreTrainedTokenizerBase, stats: EngineStats):
        self.llm, self.version, self.path, self.tokenizer = llm, version, path, tokenizer
        self.stats = stats  # vLLM's own statistics of this engine (inference/engine_stats.py)
        self.fingerprint = arch_fingerprint(path)
        self.tokenizer_fingerprint = tokenizer_fingerprint(path)
        self.in_flight = 0  # requests the engine is working on (see generate)
        self.max_lora_rank: int | None = None  # None: started without LoRA support
        # Bumped by every weight reload: an adapter loaded before one was made for other weights.
        self.weights_epoch = 0
        self._lora_ids = 0
        self._running: set[str] = set()
        self._gate = _SwapGate()

    @property
    def engine(self) -> VLLMEngine:
        """The engine that runs this route's requests: itself (an AdapterRoute names its engine)."""
        return self

    @classmethod
    async def launch(
        cls, version: str, path: Path, config: EngineConfig, lora_rank: int | None = None
    ) -> VLLMEngine:
        """Build and warm up an engine on a checkpoint (validated by the caller), with LoRA support for
        adapters up to `lora_rank` if given; RegistryError if it cannot be started."""
        lora = {}
        if lora_rank is not None:
            lora_rank = lora_rank_bucket(lora_rank)
            lora = {"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": config.max_loras}
        stats = EngineStats()
        started = time.monotonic()
        log.info("engine: starting vLLM on %s (%s)", version, path)
        # Construction blocks for tens of seconds (importing vLLM, process spawn, model load): off
        # the event loop, so that requests, /healthz and /readyz are answered meanwhile.
        try:
            llm = await asyncio.to_thread(  # the stat logger imports vLLM too
                lambda: start_async_llm(engine_kwargs(path, config, **lora), [stats.logger()])
            )
        except Exception as exc:
            hint = ""
            if torch.cuda.is_available():
                hint = (
                    f" (each engine asks for {config.gpu_memory_share():.2f} of GPU memory; a second engine, for "
                    "blue/green or a canary, needs engine.gpu_memory_utilization below 0.5)"
                )
            raise RegistryError(f"could not start an engine on {version}: {exc}{hint}") from exc
        try:
            tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, path)
            engine = cls(llm, version, path, tokenizer, stats)
            engine.max_lora_rank = lora_rank
            log.info("engine: %s started in %.1fs; warming up", version, time.monotonic() - started)
            await engine._warm_up()
        except BaseException:
            llm.shutdown()
            raise
        log.info("engine: %s ready (%.1fs after start)", version, time.monotonic() - started)
        return engine

    async def _warm_up(self) -> None:
        ids = self.tokenizer("warm up", add_special_tokens=False)["input_ids"]
        async for _ in self.generate(ids, Sampling(max_tokens=4, temperature=0.0)):
            pass

    async def add_lora(self, version: str, path: Path, rank: int) -> LoRA:
        """Load a LoRA adapter version (verified by the caller) for this engine's weights and run it
        once, so that an adapter vLLM cannot apply fails here and not on a request; RegistryError
        (nothing changed) if this engine cannot hold it or vLLM refuses it."""
        from vllm.lora.request import LoRARequest

        if self.max_lora_rank is None:
            raise RegistryError(f"the engine on {self.version} was started without LoRA support")
        if rank > self.max_lora_rank:
            raise RegistryError(
                f"{version} has LoRA rank {rank}; the engine on {self.version} holds ranks up to "
                f"{self.max_lora_rank}"
            )
        self._lora_ids += 1  # a fresh id per load: vLLM caches adapters by id
        lora = LoRA(LoRARequest(version, self._lora_ids, str(path)), self.weights_epoch)
        try:
            await self.llm.add_lora(lora.request)
            async for _ in self.generate([0], Sampling(max_tokens=1, temperature=0.0), adapter=lora):
                pass
        except Exception as exc:
            await self.remove_lora(lora)
            raise RegistryError(f"could not load the adapter {version}: {exc}"[:500]) from exc
        return lora

    async def remove_lora(self, lora: LoRA) -> None:
        """Unload an adapter nobody routes to any more (its requests have finished)."""
        if self.llm is not None:
            with contextlib.suppress(Exception):  # already evicted, or the engine is stopping
                await self.llm.remove_lora(lora.request.lora_int_id)

    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling: Sampling,
        request_id: str | None = None,
        adapter: LoRA | None = None,
    ) -> AsyncIterator[Chunk]:
        """Stream new output of every candidate (with `adapter`, by that adapter version); aborts the
        engine request if the caller stops."""
        params = vllm_params(sampling)
        request_id = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        done = object()
        # Counted before any await (a switch that moves traffic away sees every request sent here),
        # and until the *engine* is done with it, not the client: output is buffered (at most
        # max_tokens per candidate), so a client that stops reading holds no engine, no weights
        # and no retiring engine's memory.
        self.in_flight += 1
        try:
            await self._gate.acquire_shared()
        except BaseException:
            self.in_flight -= 1
            raise
        # A reload that ran while this request waited made the adapter stale (it was trained on the
        # old weights): the request is then served by the new weights alone, and labelled so, as an
        # in-place swap serves every request planned before it.
        lora = adapter.request if adapter is not None and adapter.epoch == self.weights_epoch else None
        version = lora.lora_name if lora is not None else self.version
        self._running.add(request_id)

        async def pump() -> None:
            steps: dict[int, int] = {}  # tokens per candidate so far: the longest is the decoding steps
            try:
                async for out in self.llm.generate(
                    {"prompt_token_ids": prompt_token_ids}, params, request_id, lora_request=lora
                ):
                    first_token_at = _first_token_at(out)
                    for c in out.outputs:
                        steps[c.index] = len(c.token_ids) + (
                            0 if sampling.final_only else steps.get(c.index, 0)
                        )
                    prefill, step = (
                        _engine_timings(out, max(steps.values(), default=0)) if out.finished else (None, None)
                    )
                    for c in out.outputs:
                        logprobs = None
                        if c.logprobs is not None:
                            logprobs = [
                                {tid: (lp.logprob, lp.decoded_token) for tid, lp in step.items()}
                                for step in c.logprobs
                            ]
                        queue.put_nowait(
                            Chunk(
                                c.index,
                                c.text,
                                list(c.token_ids),
                                logprobs,
                                c.finish_reason,
                                version,
                                first_token_at,
                                prefill,
                                step,
                            )
                        )
                queue.put_nowait(done)
            except BaseException as exc:  # handed to the caller, who re-raises it
                queue.put_nowait(exc)
            finally:
                self._running.discard(request_id)
                self.in_flight -= 1
                await self._gate.release_shared()

        task = asyncio.create_task(pump())
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                await self.llm.abort(request_id)

    async def reload(self, version: str, path: Path) -> None:
        """Swap this engine's weights for another version's of the same architecture, in place."""
        if arch_fingerprint(path) != self.fingerprint:
            raise RegistryError(
                f"{version} has another architecture or tokenizer than {self.version}; "
                "an in-place swap needs the same shapes (use swap mode blue_green, or restart the gateway on it)"
            )
        async with self._gate.exclusive():
            await self.llm.pause_generation(mode="wait")
            try:
                await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
            except Exception as exc:
                # The reload failed part-way: put the old weights back before serving again.
                log.error("engine: loading %s failed (%s); restoring %s", version, exc, self.version)
                await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.path)})
                raise RegistryError(f"could not load {version}: {exc}") from exc
            finally:
                await self.llm.resume_generation()
            self.version, self.path = version, path
            self.weights_epoch += 1
            self.stats.reset()  # the totals under the new version's label start from nothing

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the engine has no request left (True), or timeout_s passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.in_flight

    async def retire(self, drain_timeout_s: float) -> None:
        """Let running requests finish (for at most drain_timeout_s, then abort them), then stop the
        engine's worker processes: an engine taken out of service always gives its memory back."""
        if not await self.drain(drain_timeout_s):
            log.warning(
                "engine: %d requests on the retiring %s engine outlived %.0fs; aborting them",
                self.in_flight,
                self.version,
                drain_timeout_s,
            )
            await self.llm.abort(list(self._running))
            await self.drain(5.0)
        await asyncio.to_thread(self.shutdown)
        log.info("engine: retired the engine that served %s", self.version)

    def shutdown(self) -> None:
        """Stop the engine's worker processes now."""
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None
