"""What the spool lets go of, each in a supervised thread.

EmbeddedRetention: with no broker, the local log is the topic the trainer (and the gateway's evidence
feed, on the feedback topic) reads. Once every named consumer group that reads a topic has committed
a record, the trainer has it in its own dataset store, so it can go:
the spool then measures what the trainer has yet to take (as it measures what Kafka has yet to take
otherwise), and a long-running single-machine setup neither fills the disk nor hits the size cap.
A group that never committed keeps everything (nothing is lost).

IndexRetention: the idempotency index remembers keys for feedback.index_retention_days; older
rows are pruned and their pages handed back to the disk.
"""

from __future__ import annotations

import logging
import threading
import time

from core.supervision import OnFailure, SupervisedThread
from feedback.idempotency import IdempotencyIndex
from feedback.local_log import LocalLog
from feedback.spool_usage import SpoolUsage
from feedback.topics import ALL as ALL_TOPICS

log = logging.getLogger(__name__)
_EVERY_S = 1.0
_INDEX_EVERY_S = 600.0


class EmbeddedRetention:
    """Deletes what every consumer group has committed."""

    def __init__(
        self, spool: LocalLog, groups: dict[str, tuple[str, ...]], usage: SpoolUsage, on_failure: OnFailure
    ):
        self._log, self._groups, self._usage = spool, groups, usage
        self._retained: dict[str, int] = {}
        self._thread = SupervisedThread("feedback-retention", self._loop, on_failure)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(_EVERY_S):
            self.sweep()

    def sweep(self) -> None:
        """Delete, per topic, what every group that reads it has committed; recount what is left."""
        for topic in ALL_TOPICS:
            readers = [g for g, topics in self._groups.items() if topic in topics]
            if not readers:
                continue  # nobody reads it here: keep it
            floor = min(self._log.committed(g, topic) for g in readers)
            if floor <= self._retained.get(topic, 0):
                continue
            self._log.delete_topic_before(topic, floor)
            self._retained[topic] = floor
        self._usage.reset_undelivered(*self._log.stats(0))

    def close(self) -> None:
        """Stop the thread."""
        self._thread.stop(timeout=5)


class IndexRetention:
    """Prunes index rows older than the retention window."""

    def __init__(
        self,
        spool: LocalLog,
        retention_s: float,
        usage: SpoolUsage,
        on_failure: OnFailure,
        every_s: float = _INDEX_EVERY_S,
    ):
        self._log, self._retention_s, self._usage, self._every_s = spool, retention_s, usage, every_s
        self._thread = SupervisedThread("feedback-index-retention", self._loop, on_failure)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.sweep()
            stop.wait(self._every_s)

    def sweep(self) -> int:
        """Prune what is older than the window; returns the rows removed."""
        with self._log.transaction() as tx:
            rows, size = IdempotencyIndex.prune(tx.cursor, time.time() - self._retention_s)
        if rows:
            self._usage.add_index(-size)
            self._log.reclaim()
            log.info(
                "feedback: pruned %d index rows (%d bytes) older than %.1f days",
                rows,
                size,
                self._retention_s / 86400,
            )
        return rows

    def close(self) -> None:
        """Stop the thread."""
        self._thread.stop(timeout=5)
