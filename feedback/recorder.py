"""The gateway's side of feedback capture: durable acceptance, then delivery.

    record_completion / submit  ->  SpoolWriter (group commit to the local log, feedback/spool_writer.py)
                                ->  KafkaShipper (in order to Kafka, feedback/kafka_shipper.py)
                                    or, embedded, EmbeddedRetention (feedback/retention.py)

Served completions are handed over without waiting; feedback is acknowledged only once it is
fsync'd. The same database keeps the idempotency keys (feedback/idempotency.py), so a retried
submission is answered with its first outcome, also after a restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from core.config import FeedbackConfig
from core.supervision import OnFailure
from feedback.events import CompletionServed
from feedback.idempotency import MIGRATIONS, IdempotencyIndex
from feedback.idempotency import SCHEMA as INDEX_SCHEMA
from feedback.kafka_shipper import DEAD_LETTER_SCHEMA, KafkaShipper, shipped_offset
from feedback.local_log import LocalLog
from feedback.metrics import FeedbackMetrics
from feedback.retention import EmbeddedRetention, IndexRetention
from feedback.spool_usage import SpoolUsage
from feedback.spool_writer import CompletionWrite, FeedbackWrite, SpoolWriter
from feedback.submission import Accepted, SpoolFull, SpoolUnavailable, Submission

log = logging.getLogger(__name__)
_MAX_BACKLOG = 20_000  # items waiting for the disk; past this the disk is not keeping up: shed load


class FeedbackRecorder:
    """Accepts events durably and delivers them to Kafka (or keeps them, embedded)."""

    def __init__(
        self,
        config: FeedbackConfig,
        spool_path: Path,
        registry: CollectorRegistry,
        consumer_groups: dict[str, tuple[str, ...]] | None = None,
        on_failure: OnFailure = lambda task: None,
    ):
        """Embedded, `consumer_groups` are the readers (group -> the topics it reads: the trainer's
        group, the gateway's evidence feed) whose commits let events be deleted from the log; with
        none, the log keeps everything. `on_failure(task)` is told each time a background thread
        fails (and restarts)."""
        self.config = config
        self.embedded = not config.kafka_bootstrap
        self.log = LocalLog(spool_path, INDEX_SCHEMA + DEAD_LETTER_SCHEMA)
        self.log.migrate(MIGRATIONS)
        self.metrics = FeedbackMetrics(registry)
        events, size = self.log.stats(0 if self.embedded else shipped_offset(self.log))
        with self.log.transaction() as tx:
            index_size = IdempotencyIndex.size(tx.cursor)
        self.usage = SpoolUsage(self.metrics, config.max_spool_bytes, events, size, index_size)
        failed = on_failure
        self._shipper = (
            KafkaShipper(self.log, config, self.usage, self.metrics, failed) if not self.embedded else None
        )
        self._retention = (
            EmbeddedRetention(self.log, consumer_groups, self.usage, failed)
            if self.embedded and consumer_groups
            else None
        )
        self._index_retention = IndexRetention(
            self.log, config.index_retention_days * 86400, self.usage, failed
        )
        self._writer = SpoolWriter(
            self.log,
            self.usage,
            self.metrics,
            config.max_idempotency_keys_per_caller,
            on_commit=self._shipper.wake if self._shipper else lambda: None,
            on_failure=failed,
        )
        if events and self._shipper:
            log.info("feedback: %d events (%d bytes) from before the restart wait for Kafka", events, size)

    def record_completion(self, event: CompletionServed) -> None:
        """Hand over a served completion; never blocks. Dropped (and counted) if the spool is full."""
        value = event.to_bytes()
        if self._writer.backlog() > _MAX_BACKLOG:
            self.metrics.completions.labels("dropped_backlog").inc()
            return
        if not self.usage.has_room(len(value)):
            self.metrics.completions.labels("dropped_spool_full").inc()
            log.warning(
                "feedback: spool full (%d bytes); completion %s not recorded",
                self.usage.bytes,
                event.request_id,
            )
            return
        self._writer.put(CompletionWrite(event, value))

    async def submit(self, items: list[Submission]) -> list[Accepted]:
        """Accept feedback events, all or none, once they are durable."""
        size = sum(len(i.event.to_bytes()) for i in items)
        if not self.usage.has_room(size):
            raise SpoolFull(f"{self.usage.bytes} bytes wait for delivery")
        if self._writer.backlog() > _MAX_BACKLOG:
            raise SpoolUnavailable(f"{self._writer.backlog()} items wait for the disk")
        future: concurrent.futures.Future[list[Accepted]] = concurrent.futures.Future()
        self._writer.put(FeedbackWrite(items, future))
        try:
            # Bounded: a stalled disk answers 503, never a request that waits for ever. On timeout
            # the wait is cancelled, and so is the submission if the writer has not started on it.
            async with asyncio.timeout(self.config.write_timeout_s):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            raise SpoolUnavailable(
                f"the spool did not take the feedback within {self.config.write_timeout_s:g}s"
            ) from None
        except (sqlite3.Error, OSError) as exc:  # the disk is full or failing: nothing was accepted
            raise SpoolUnavailable(f"the spool could not store the feedback ({type(exc).__name__})") from exc

    def undelivered(self) -> int:
        """Events accepted but not yet delivered to Kafka (embedded: not yet consumed by the trainer)."""
        return self.usage.events

    def close(self, drain_timeout: float = 10.0) -> None:
        """Finish writing what was handed over; give the shipper a moment to deliver."""
        deadline = time.monotonic() + drain_timeout
        while not self._writer.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        while self._shipper and self.usage.events and time.monotonic() < deadline:
            time.sleep(0.05)
        for part in (self._writer, self._shipper, self._retention, self._index_retention):
            if part is not None:
                part.close()
        self.log.close()
