"""How much the spool holds that has not been delivered yet: what the size cap is checked against."""

from __future__ import annotations

import threading

from feedback.metrics import FeedbackMetrics


class SpoolUsage:
    """Undelivered events and bytes; the writer adds, the shipper or retention subtracts."""

    def __init__(self, metrics: FeedbackMetrics, cap_bytes: int, events: int = 0, size: int = 0):
        self._metrics, self.cap_bytes = metrics, cap_bytes
        self._events, self._bytes = events, size
        self._lock = threading.Lock()
        self._show()

    @property
    def events(self) -> int:
        """Undelivered events."""
        return self._events

    @property
    def bytes(self) -> int:
        """Undelivered bytes."""
        return self._bytes

    def has_room(self, size: int) -> bool:
        """Whether size more bytes stay within the cap."""
        return self._bytes + size <= self.cap_bytes

    def add(self, events: int, size: int) -> None:
        """Count events written (negative: delivered or removed)."""
        with self._lock:
            self._events += events
            self._bytes += size
        self._show()

    def _show(self) -> None:
        self._metrics.spool_events.set(self._events)
        self._metrics.spool_bytes.set(self._bytes)
