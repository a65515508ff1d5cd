"""Every gateway reads people's verdicts back from the feedback log, all replicas' alike.

The feedback route only checks and records a ranking; this reader, a consumer of the feedback topic
(Kafka, or the embedded log of a single gateway) in a group of its own store's, keeps each
cross-version ranking in the evidence store and commits after it. So the verdicts given on any
replica reach every replica's store, the canary's test runs on all of them, and a store rebuilt
(a restarted process resumes from its committed offset; a deleted store starts a new group and
reads the log from its start) holds the same verdicts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.config import FeedbackConfig
from feedback.events import Comparison
from feedback.source import EventSource, TopicMissing, open_source
from feedback.topics import FEEDBACK
from promotion.evidence import EvidenceStore

log = logging.getLogger(__name__)
_PRUNE_EVERY_S = 3600.0
_RETRY_S, _MAX_RETRY_S = 2.0, 30.0


class EvidenceFeed:
    """A daemon thread: feedback log -> evidence store."""

    def __init__(
        self,
        store: EvidenceStore,
        config: FeedbackConfig,
        state_dir: Path,
        on_kept: Callable[[int], object] = lambda count: None,
        on_failure: Callable[[], object] = lambda: None,
    ):
        self.store, self.config, self.state_dir = store, config, state_dir
        # Verdicts on requests past the feedback window can no longer change: forget them then.
        self.retention_s = config.index_retention_days * 86400
        self.on_kept, self.on_failure = on_kept, on_failure
        self.group = store.consumer_group()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evidence-feed", daemon=True)

    def start(self) -> EvidenceFeed:
        """Start reading."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading (what was kept stays kept)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        backoff = _RETRY_S
        while not self._stop.is_set():
            source = None
            try:
                source = open_source(self.config, self.state_dir, self.group, (FEEDBACK,), whole=True)
                backoff = _RETRY_S
                self._read(source)
            except TopicMissing:  # no feedback was ever shipped: nothing to read yet
                self._stop.wait(_RETRY_S)
            except Exception:  # a broker away, a disk error: say so, count it, and try again
                log.exception(
                    "evidence feed: reading the feedback log failed; retrying in %.0f s (verdicts wait "
                    "in the log meanwhile: the canary's test waits, it loses nothing)",
                    backoff,
                )
                self.on_failure()
                self._stop.wait(backoff)
                backoff = min(_MAX_RETRY_S, 2 * backoff)
            finally:
                if source is not None:
                    with contextlib.suppress(Exception):
                        source.close()

    def _read(self, source: EventSource) -> None:
        pruned_at = 0.0
        while not self._stop.is_set():
            if time.monotonic() - pruned_at > _PRUNE_EVERY_S:
                pruned_at = time.monotonic()
                self.store.prune(self.retention_s)
            delivered = source.poll(timeout_s=0.5)
            verdicts = [
                d.event for d in delivered if isinstance(d.event, Comparison) and d.event.choice_versions
            ]
            if verdicts and (kept := self.store.record_many(verdicts)):
                self.on_kept(kept)
            if delivered:
                source.commit()  # after the store has them: a crash re-delivers, and re-recording is a no-op
