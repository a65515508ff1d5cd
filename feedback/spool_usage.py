"""How much the spool holds that has not been delivered yet: what the size cap is checked against."""

from __future__ import annotations

import threading

from feedback.metrics import FeedbackMetrics


class SpoolUsage:
    """Undelivered events and bytes; the writer adds, the shipper or retention subtracts."""

    def __init__(
        self, metrics: FeedbackMetrics, cap_bytes: int, events: int = 0, size: int = 0, index: int = 0
    ):
        self._metrics, self.cap_bytes = metrics, cap_bytes
        self._events, self._bytes, self._index = events, size, index
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

    @property
    def index_bytes(self) -> int:
        """Bytes of the served-choice and idempotency index."""
        return self._index

    def has_room(self, size: int) -> bool:
        """Whether size more bytes stay within the cap (undelivered events and the index together)."""
        return self._bytes + self._index + size <= self.cap_bytes

    def add(self, events: int, size: int) -> None:
        """Count events written (negative: delivered or removed)."""
        with self._lock:
            self._events += events
            self._bytes += size
        self._show()

    def reset_undelivered(self, events: int, size: int) -> None:
        """Set the undelivered count from the log itself (after a failure left memory unsure)."""
        with self._lock:
            self._events, self._bytes = events, size
        self._show()

    def add_index(self, size: int) -> None:
        """Count index rows written (negative: pruned)."""
        with self._lock:
            self._index += size
        self._show()

    def _show(self) -> None:
        self._metrics.spool_events.set(self._events)
        self._metrics.spool_bytes.set(self._bytes)
        self._metrics.index_bytes.set(self._index)
