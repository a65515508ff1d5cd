"""Event-loop stalls: how late the gateway's loop wakes up, as a metric and a warning.

Everything the gateway does for its clients runs on one asyncio loop; anything that holds it (a
blocking call, a thread holding the GIL) delays every request and every timer at once. A sleeper
that measures how late it wakes up shows such stalls on the dashboard and names them in the log."""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Histogram

log = logging.getLogger(__name__)


async def watch_loop(lag: Histogram, period_s: float = 0.25, warn_s: float = 1.0) -> None:
    """Sleep `period_s` forever; record each wake-up's lateness, warn about those over `warn_s`."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(period_s)
        late = time.monotonic() - before - period_s
        lag.observe(max(late, 0.0))
        if late > warn_s:
            log.warning("event loop stalled for %.2fs: every request and timer waited that long", late)
