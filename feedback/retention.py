"""Embedded retention: with no broker, the local log is the topic the trainer reads. Once every
named consumer group has committed a record, the trainer has it in its own dataset store, so it
can go: the spool then measures what the trainer has yet to take (as it measures what Kafka has
yet to take otherwise), and a long-running single-machine setup neither fills the disk nor hits
the size cap. A group that never committed keeps everything (nothing is lost)."""

from __future__ import annotations

import logging
import threading

from feedback.local_log import LocalLog
from feedback.spool_usage import SpoolUsage
from feedback.topics import ALL as ALL_TOPICS

log = logging.getLogger(__name__)
_EVERY_S = 1.0


class EmbeddedRetention:
    """A thread that deletes what every consumer group has committed."""

    def __init__(self, spool: LocalLog, groups: tuple[str, ...], usage: SpoolUsage):
        self._log, self._groups, self._usage = spool, groups, usage
        self._retained: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="feedback-retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(_EVERY_S):
            try:
                self.sweep()
            except Exception:  # a busy or failing disk: try again next time, never stop serving
                log.exception("feedback: could not remove consumed events from the local log")

    def sweep(self) -> None:
        """Delete, per topic, what every group has committed."""
        for topic in ALL_TOPICS:
            floor = min(self._log.committed(g, topic) for g in self._groups)
            if floor <= self._retained.get(topic, 0):
                continue
            events, size = self._log.delete_topic_before(topic, floor)
            self._retained[topic] = floor
            self._usage.add(-events, -size)

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout=5)
