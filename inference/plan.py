"""A request's plan: which engine writes which of its candidates, and streaming them as one.

Usually one engine writes all n candidates. While a canary runs, a request that opts into
comparing versions has half of them written by each engine, in shuffled positions; the chunks of
both are interleaved into one stream with the request's own candidate indices.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference.sampling import Chunk, Sampling

if TYPE_CHECKING:
    from inference.adapters import AdapterRoute
    from inference.vllm_engine import VLLMEngine


@dataclass(frozen=True)
class Plan:
    """Who writes a request's candidates: `versions[i]` wrote candidate i; `parts` are (engine,
    candidate indices) pairs, one per engine used."""

    versions: list[str]
    parts: list[tuple[VLLMEngine | AdapterRoute, list[int]]]

    @property
    def mixed(self) -> bool:
        """Whether more than one version writes the candidates."""
        return len(set(self.versions)) > 1


async def stream(
    plan: Plan, prompt_token_ids: list[int], sampling: Sampling, request_id: str | None = None
) -> AsyncIterator[Chunk]:
    """Stream a plan's candidates (chunk indices are the request's), interleaved as they come."""
    if len(plan.parts) == 1:
        async with contextlib.aclosing(
            plan.parts[0][0].generate(prompt_token_ids, sampling, request_id)
        ) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(instance: VLLMEngine | AdapterRoute, where: list[int], part: int) -> None:
        try:
            part_sampling = dataclasses.replace(sampling, n=len(where))
            async with contextlib.aclosing(
                instance.generate(
                    prompt_token_ids, part_sampling, f"{request_id}-{part}" if request_id else None
                )
            ) as chunks:
                async for chunk in chunks:
                    await queue.put(dataclasses.replace(chunk, index=where[chunk.index]))
            await queue.put(done)
        except BaseException as exc:
            await queue.put(exc)
            raise

    # Created before this generator first suspends: each part is counted by its engine before a
    # switch that starts later could retire it (tasks run in the order they were created).
    tasks = [asyncio.create_task(pump(instance, where, i)) for i, (instance, where) in enumerate(plan.parts)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is done:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
