"""The spool's shipper thread: sends what the local log holds to Kafka, in order, and forgets what
Kafka acknowledged (acks=all, idempotent producer). If Kafka is down, events wait in the log and
go out when it returns, also after a gateway restart.

A record Kafka would refuse for ever (larger than feedback.max_record_bytes, or than the broker
accepts) is moved to the spool's dead-letter table with the reason, counted, and the records behind
it go on: one bad record must not block everything. The thread is supervised: any failure (a
broker error, a full disk) is logged, counted, and the loop starts again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

from core.config import FeedbackConfig
from core.supervision import OnFailure, SupervisedThread
from feedback.kafka_clients import connection_kwargs
from feedback.local_log import LocalLog, Record
from feedback.metrics import FeedbackMetrics
from feedback.spool_usage import SpoolUsage
from feedback.topics import ALL as ALL_TOPICS

if TYPE_CHECKING:
    from kafka import KafkaProducer

log = logging.getLogger(__name__)

SHIPPER_GROUP = "alignloop-kafka-shipper"
ANY_TOPIC = "*"
_BATCH = 1000
# Under load a round would otherwise carry a handful of records, each round paying for a read, a
# flush to the broker and a spool transaction on the cores that serve requests: a pause between
# rounds makes them fewer and larger, for at most 50 ms more delivery delay.
_MIN_ROUND_S = 0.05
DEAD_LETTER_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    offset INTEGER PRIMARY KEY, topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL
);
"""


def shipped_offset(spool: LocalLog) -> int:
    """The first offset the shipper has not delivered yet."""
    return spool.committed(SHIPPER_GROUP, ANY_TOPIC)


def connect_producer(config: FeedbackConfig) -> KafkaProducer:
    """A Kafka producer for the alignloop topics, creating the topics if they are missing."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    timeout_ms = int(config.kafka_timeout_s * 1000)
    # Bootstrap is bounded by the same timeout (kafka-python's own default is 30 s): an unreachable
    # broker is reported, counted and retried on the shipper's schedule, not the client library's.
    admin = KafkaAdminClient(
        request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms, **connection_kwargs(config)
    )
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(t, config.partitions, config.replication_factor) for t in ALL_TOPICS if t not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica made them first
                admin.create_topics(missing)
    finally:
        admin.close()
    return KafkaProducer(
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_block_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
        delivery_timeout_ms=2 * timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        max_request_size=config.max_record_bytes + 4096,
        **connection_kwargs(config),
    )


class KafkaShipper:
    """A supervised thread that delivers the log to Kafka."""

    def __init__(
        self,
        spool: LocalLog,
        config: FeedbackConfig,
        usage: SpoolUsage,
        metrics: FeedbackMetrics,
        on_failure: OnFailure,
    ):
        self._log, self._config, self._usage, self._metrics = spool, config, usage, metrics
        self._shipped = shipped_offset(spool)
        self._wake = threading.Event()
        self._producer = None
        self._thread = SupervisedThread("kafka-shipper", self._loop, self._on_failure(on_failure))

    def _on_failure(self, counted: OnFailure) -> OnFailure:
        def failed(name: str) -> None:
            self._metrics.kafka_up.set(0)
            self._close_producer()
            counted(name)

        return failed

    def wake(self) -> None:
        """New records were committed: look now rather than at the next poll."""
        self._wake.set()

    def _loop(self, stop: threading.Event) -> None:
        # (Re)started: what is durable is the truth, whatever a failed step left in memory.
        self._shipped = shipped_offset(self._log)
        self._usage.reset_undelivered(*self._log.stats(self._shipped))
        backoff = 0.5
        while not stop.is_set():
            round_started = time.monotonic()
            batch = self._log.read(self._shipped, limit=_BATCH)
            if not batch:
                # Idle: recount from the log, so the spool's size converges on the truth even if a
                # count raced a write or a failure.
                self._usage.reset_undelivered(*self._log.stats(self._shipped))
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                refused = self._send(batch)
            except Exception as exc:
                # Some of the batch may have arrived: sending it again can duplicate, never lose.
                # Consumers de-duplicate by event id.
                self._metrics.failures.inc()
                self._metrics.kafka_up.set(0)
                log.warning(
                    "feedback: Kafka unreachable (%s: %s); %d events wait in the spool, retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    self._usage.events,
                    backoff,
                )
                self._close_producer()
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            self._forget(batch, refused)
            if len(batch) < _BATCH:
                stop.wait(max(0.0, _MIN_ROUND_S - (time.monotonic() - round_started)))

    def _send(self, batch: list[Record]) -> dict[int, str]:
        """Send a batch; returns the records Kafka refuses for ever (offset -> reason). Raises on
        anything that may pass (the broker is down)."""
        from kafka.errors import MessageSizeTooLargeError

        producer = self._producer
        if producer is None:
            producer = self._producer = connect_producer(self._config)
            log.info("feedback: connected to Kafka at %s", self._config.kafka_bootstrap)
            self._metrics.kafka_up.set(1)
        refused = {
            r.offset: f"{len(r.value)} bytes is above feedback.max_record_bytes ({self._config.max_record_bytes})"
            for r in batch
            if len(r.value) > self._config.max_record_bytes
        }
        futures = [
            (r, producer.send(r.topic, key=r.key, value=r.value)) for r in batch if r.offset not in refused
        ]
        producer.flush(timeout=self._config.kafka_timeout_s * 2)
        for record, future in futures:
            try:
                future.get(timeout=0)
            except MessageSizeTooLargeError as exc:
                refused[record.offset] = f"the broker refused its size ({exc})"
        return refused

    def _forget(self, batch: list[Record], refused: dict[int, str]) -> None:
        with self._log.transaction() as tx:
            for r in batch:
                if r.offset in refused:
                    tx.cursor.execute(
                        "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?)",
                        (r.offset, r.topic, r.key, r.value, refused[r.offset], time.time()),
                    )
            tx.commit_offset(SHIPPER_GROUP, ANY_TOPIC, batch[-1].offset + 1)
            tx.cursor.execute("DELETE FROM records WHERE offset <= ?", (batch[-1].offset,))
        self._shipped = batch[-1].offset + 1  # only once that is durable
        for offset, reason in refused.items():
            log.error(
                "feedback: record %d will never fit in Kafka (%s); kept in the spool's dead_letters table",
                offset,
                reason,
            )
            self._metrics.dead_letters.inc()
        self._metrics.sent.inc(len(batch) - len(refused))
        self._usage.add(-len(batch), -sum(len(r.value) for r in batch))

    def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # a producer that cannot close is dropped all the same
                producer.close(timeout=0)

    def close(self) -> None:
        """Stop the thread."""
        self._wake.set()
        self._thread.stop()
        if self._producer is not None:
            self._producer.close(timeout=5)
