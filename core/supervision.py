"""Background work that cannot die quietly: a supervised thread or asyncio task runs its body in
a loop; when the body raises, the failure is logged with its reason, counted (the caller's
Prometheus counter, alerted on in deploy/prometheus/alerts.yml), and the body starts again after
a back-off. A dead writer or shipper would otherwise leave requests waiting forever."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

OnFailure = Callable[[str], None]  # called with the supervised work's name after each failure
_MAX_BACKOFF_S = 5.0


def _noop(_: str) -> None:
    pass


class SupervisedThread:
    """A daemon thread that runs `body(stop)` until `stop` is set, restarting it if it raises.

    `body` should return when `stop` is set; returning earlier ends the thread."""

    def __init__(self, name: str, body: Callable[[threading.Event], None], on_failure: OnFailure = _noop):
        self.name, self._body, self._on_failure = name, body, on_failure
        self.stop_event = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.1
        while not self.stop_event.is_set():
            try:
                self._body(self.stop_event)
                return
            except Exception as exc:  # supervised: anything that escapes the body is survived
                self.failures += 1
                log.exception(
                    "%s failed (%s: %s); restarting in %.1fs", self.name, type(exc).__name__, exc, backoff
                )
                self._on_failure(self.name)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def is_alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the body to end and wait for it."""
        self.stop_event.set()
        self._thread.join(timeout=timeout)


async def supervise(name: str, body: Callable[[], Awaitable[None]], on_failure: OnFailure = _noop) -> None:
    """Run `body()` forever (as an asyncio task), restarting it after a back-off when it raises;
    cancellation ends it."""
    backoff = 0.1
    while True:
        try:
            await body()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s failed (%s: %s); restarting in %.1fs", name, type(exc).__name__, exc, backoff)
            on_failure(name)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
