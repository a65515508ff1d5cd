"""Keep the garbage collector's full passes short, and show how long its passes take.

A gateway process holds a few hundred thousand long-lived objects (torch, transformers, vLLM, the
tokenizer, the engine) that the collector's oldest generation walks on every full pass. Seen on a
2-core machine under ~1,500 feedback requests/s (a gc callback in an ad-hoc run): a full pass every
few seconds, each 250-470 ms, stalling every request in flight. In `python -m benchmarks.feedback
--before 808b284 --rounds 4 --events 8000` the ratings p99 was 354 ms unfrozen, 28 ms frozen.
Those objects live as long as their engine, so each time the engines change they are collected once
and moved out of the collector's sight (gc.freeze); the passes then walk only what requests create.
That one collection runs on the event loop (~0.6 s here), once per engine change.
Every pass is timed into alignloop_gateway_gc_pause_seconds{generation}.

A blue/green engine retiring in the background when the heap is frozen is frozen with it: reference
counting still frees it, and what it leaves in reference cycles waits for the next engine change.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time

from prometheus_client import Gauge, Histogram

log = logging.getLogger(__name__)


def settle(frozen: Gauge | None = None) -> None:
    """Collect what the last engine change left behind, then freeze what is alive now."""
    started = time.perf_counter()
    gc.unfreeze()  # an engine that was shut down must be collectable, not kept frozen for ever
    gc.collect()
    gc.freeze()
    if frozen is not None:
        frozen.set(gc.get_freeze_count())
    log.info(
        "heap: %d long-lived objects frozen in %.0f ms",
        gc.get_freeze_count(),
        1000 * (time.perf_counter() - started),
    )


class PauseClock:
    """Times every collection. The callback only appends to a deque: it runs inside whatever code
    allocated, perhaps holding a metric's lock, so it must not touch the metrics itself."""

    def __init__(self) -> None:
        self._pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=100_000)
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.append((info["generation"], time.perf_counter() - self._started))

    async def report(self, pauses: Histogram, period_s: float = 1.0) -> None:
        """Move the timed passes into the histogram every period_s, for ever."""
        try:
            while True:
                while self._pauses:
                    generation, seconds = self._pauses.popleft()
                    pauses.labels(str(generation)).observe(seconds)
                await asyncio.sleep(period_s)
        finally:
            gc.callbacks.remove(self._callback)
