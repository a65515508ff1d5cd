"""What the front door costs: a request's time in the gateway outside the engine.

The middleware gives each request an EngineClock; serving wraps the engine's output stream in it,
so every wait for the engine's next piece is counted. The gateway's own cost (parsing, auth,
tokenising, validation, recording, rendering) is then the request's time less the engine waits,
less the waits for the request's body to arrive (a client may send its head and its body apart,
and a busy client's body can come much later), less the time spent handing body bytes to a slow
client, and less the turns a stream gives other tasks between its pieces (their work, not its).
It is exported as the histogram alignloop_gateway_overhead_seconds{route} and, for each response,
as the header X-Alignloop-Overhead-Ms (measured when the response head is sent: for a stream, up to
its first byte), as LiteLLM's x-litellm-overhead-duration-ms does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")
SCOPE_KEY = "alignloop_engine_clock"
HEADER = b"x-alignloop-overhead-ms"


class EngineClock:
    """Seconds one request spent waiting for the engine, for the client's request body, sending
    body bytes to the client, and letting other tasks run."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.engine_s = 0.0
        self.receiving_s = 0.0
        self.sending_s = 0.0
        self.yielded_s = 0.0

    async def timed(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """The same items, with the time spent waiting for each one counted as engine time."""
        try:
            while True:
                t0 = time.monotonic()
                try:
                    item = await anext(items)
                finally:
                    self.engine_s += time.monotonic() - t0
                yield item
        except StopAsyncIteration:
            return
        finally:
            await items.aclose()

    async def let_others_run(self) -> None:
        """One turn of the event loop for the other tasks; the time they take is not counted."""
        t0 = time.monotonic()
        await asyncio.sleep(0)
        self.yielded_s += time.monotonic() - t0

    def overhead_s(self) -> float:
        """The gateway's own time so far."""
        waits = self.engine_s + self.receiving_s + self.sending_s + self.yielded_s
        return max(0.0, time.monotonic() - self.started - waits)


def clock_of(scope: dict) -> EngineClock:
    """The request's clock (a fresh one if the middleware did not set one, as in a bare app)."""
    return scope.get("state", {}).get(SCOPE_KEY) or EngineClock()
