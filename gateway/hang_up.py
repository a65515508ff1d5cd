"""Awaiting a request's engine work unless its client hangs up first.

The work runs in the request's own task, and a watcher task beside it interrupts it on a hang-up.
Running the work in a task of its own would cost two trips through the event loop's queue per
request (one to start it, one to hear that it ended), and under load each trip waits behind every
other ready callback: that was most of the gateway's overhead p99 (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


class HungUp(Exception):
    """The client closed its connection while its request's work ran; the work was cancelled."""


async def unless_hung_up(request: Request, work: Awaitable[T], retry_s: float = 0.5) -> T:
    """The work's result; HungUp, with the work cancelled, if the client hangs up first."""
    handler = asyncio.current_task()
    hung_up = False

    async def watch() -> None:
        # Once the body has been read, the server's receive() returns only when the client hangs up
        # (as Starlette's StreamingResponse listens for it): noticed at once, and no timer per request.
        nonlocal hung_up
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                hung_up = True
                handler.cancel()
                return
            await asyncio.sleep(retry_s)  # not expected past the body; never spin on it

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not hung_up:
            raise  # a cancellation from outside (shutdown): not ours to swallow
        handler.uncancel()
    finally:
        watcher.cancel()
    raise HungUp()
