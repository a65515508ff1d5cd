"""Streamed responses: server-sent-event framing, and ending a stream exactly once however it ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from gateway.rendering import Accumulator
from inference.sampling import Chunk


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class StreamEnd:
    """Ends a stream once: tells `on_end(generated tokens, finished)` (which counts a hang-up and
    gives the caller's reservation back) and aborts the engine request. Called from the event
    generator's `finally` and again (a no-op then) when the response ends: under an ASGI server of
    spec 2.4 or later, Starlette sends the response start before it iterates, and a client already
    gone makes that send raise, so the generator never starts and its `finally` never runs."""

    def __init__(
        self, chunks: AsyncIterator[Chunk], result: Accumulator, on_end: Callable[[int, bool], None]
    ):
        self.chunks, self.result, self.on_end = chunks, result, on_end
        self.ended = False

    async def __call__(self, finished: bool) -> None:
        if self.ended:
            return
        self.ended = True
        self.on_end(self.result.generated, finished)
        await self.chunks.aclose()


class ClosingStreamingResponse(StreamingResponse):
    """Ends its stream however the response ends. When a client hangs up, Starlette cancels the
    send; a generator suspended at a `yield` would otherwise keep its engine request running until
    the garbage collector finalises it, and one never started would keep its reservation."""

    def __init__(self, content: AsyncIterator[str], end: StreamEnd, **kwargs):
        super().__init__(content, **kwargs)
        self.end = end

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self.end(finished=False)
