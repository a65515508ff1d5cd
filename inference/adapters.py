"""A LoRA adapter version served by the engine that holds its base (vLLM's LoRA support).

Every adapter version of one base runs on one engine: the serving version and a canary are two
adapters (or the base and an adapter) of the same engine, and a request names its adapter. So a
canary starts no engine, a promotion or a roll-back between adapters moves no weights and drains
nothing, and a blinded request that mixes both versions is answered by one engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from inference.sampling import Chunk, Sampling
from inference.vllm_engine import LoRA, VLLMEngine

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(eq=False)
class AdapterRoute:
    """An adapter version loaded on an engine: what requests to that version run on."""

    engine: VLLMEngine
    version: str
    lora: LoRA
    load_seconds: float
    in_flight: int = field(default=0)  # this version's requests the engine is working on

    @classmethod
    async def load(cls, engine: VLLMEngine, version: str, path: Path, rank: int) -> AdapterRoute:
        """Load an adapter version (verified by the caller) on an engine; RegistryError if it cannot."""
        started = time.monotonic()
        lora = await engine.add_lora(version, path, rank)
        return cls(engine, version, lora, time.monotonic() - started)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The base's tokenizer (an adapter has no other)."""
        return self.engine.tokenizer

    async def generate(
        self, prompt_token_ids: list[int], sampling: Sampling, request_id: str | None = None
    ) -> AsyncIterator[Chunk]:
        """Stream new output of every candidate, written by this adapter version."""
        self.in_flight += 1
        try:
            async with contextlib.aclosing(
                self.engine.generate(prompt_token_ids, sampling, request_id, adapter=self.lora)
            ) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self.in_flight -= 1

    async def retire(self, drain_timeout_s: float) -> None:
        """Unload the adapter once its running requests are done (or drain_timeout_s passed: the
        engine's own retirement, or nobody, aborts what is left); its engine goes on serving."""
        deadline = time.monotonic() + drain_timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.engine.remove_lora(self.lora)
