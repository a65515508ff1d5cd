"""The spool's shipper thread: sends what the local log holds to Kafka, in order, and forgets what
Kafka acknowledged (acks=all, idempotent producer). If Kafka is down, events wait in the log and
go out when it returns, also after a gateway restart."""

from __future__ import annotations

import logging
import threading

from core.config import FeedbackConfig
from feedback.local_log import LocalLog
from feedback.metrics import FeedbackMetrics
from feedback.spool_usage import SpoolUsage
from feedback.topics import ALL as ALL_TOPICS

log = logging.getLogger(__name__)

SHIPPER_GROUP = "alignloop-kafka-shipper"
ANY_TOPIC = "*"
_BATCH = 1000


def shipped_offset(spool: LocalLog) -> int:
    """The first offset the shipper has not delivered yet."""
    return spool.committed(SHIPPER_GROUP, ANY_TOPIC)


def connect_producer(config: FeedbackConfig):
    """A Kafka producer for the alignloop topics, creating the topics if they are missing."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    timeout_ms = int(config.kafka_timeout_s * 1000)
    admin = KafkaAdminClient(bootstrap_servers=config.kafka_bootstrap, request_timeout_ms=timeout_ms)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, config.partitions, config.replication_factor) for t in ALL_TOPICS if t not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return KafkaProducer(
        bootstrap_servers=config.kafka_bootstrap, acks="all", enable_idempotence=True,
        linger_ms=5, max_block_ms=timeout_ms, request_timeout_ms=timeout_ms,
        delivery_timeout_ms=2 * timeout_ms, reconnect_backoff_max_ms=1000,
    )


class KafkaShipper:
    """A thread that delivers the log to Kafka."""

    def __init__(self, spool: LocalLog, config: FeedbackConfig, usage: SpoolUsage, metrics: FeedbackMetrics):
        self._log, self._config, self._usage, self._metrics = spool, config, usage, metrics
        self._shipped = shipped_offset(spool)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kafka-shipper", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New records were committed: look now rather than at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        producer, backoff = None, 0.5
        while not self._stop.is_set():
            batch = self._log.read(self._shipped, limit=_BATCH)
            if not batch:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                if producer is None:
                    producer = connect_producer(self._config)
                    log.info("feedback: connected to Kafka at %s", self._config.kafka_bootstrap)
                    self._metrics.kafka_up.set(1)
                futures = [producer.send(r.topic, key=r.key, value=r.value) for r in batch]
                producer.flush(timeout=self._config.kafka_timeout_s * 2)
                for f in futures:
                    f.get(timeout=0)
            except Exception as exc:
                # Some of the batch may have arrived: sending it again can duplicate, never lose.
                # Consumers de-duplicate by event id.
                self._metrics.failures.inc()
                self._metrics.kafka_up.set(0)
                log.warning("feedback: Kafka unreachable (%s: %s); %d events wait in the spool, retrying in %.1fs",
                            type(exc).__name__, exc, self._usage.events, backoff)
                producer = _close_quietly(producer)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            self._shipped = batch[-1].offset + 1
            self._log.commit(SHIPPER_GROUP, ANY_TOPIC, self._shipped)
            self._log.delete_before(self._shipped)
            self._metrics.sent.inc(len(batch))
            self._usage.add(-len(batch), -sum(len(r.value) for r in batch))
        if producer is not None:
            producer.close(timeout=5)

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)


def _close_quietly(producer) -> None:
    if producer is not None:
        try:
            producer.close(timeout=0)
        except Exception:
            pass
    return None
