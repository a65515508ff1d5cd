"""The gateway's side of feedback capture: durable acceptance, then in-order delivery to Kafka.

Served completions are handed over without waiting (serving never waits on the disk or Kafka);
feedback is acknowledged only once it is fsync'd to the local log. A writer thread group-commits
both; a shipper thread sends what the log holds to Kafka in order (acks=all, idempotent producer)
and forgets it once acknowledged. If Kafka is down, events wait in the log and go out when it
returns, also after a gateway restart. With no broker configured the log is the destination, and
events are deleted from it once the trainer's consumer group has committed them.

The log's database also keeps which choice ids were served to whom (so users may only rate what
they were served, even after a restart) and the idempotency keys already used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from alignloop.config import FeedbackConfig
from feedback.events import CompletionServed
from feedback.local_log import LocalLog, Transaction
from feedback.topics import ALL as ALL_TOPICS
from feedback.topics import topic_for

log = logging.getLogger(__name__)

SHIPPER_GROUP = "alignloop-kafka-shipper"
_RETENTION_EVERY_S = 1.0
ANY_TOPIC = "*"
_INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    choice_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, caller TEXT NOT NULL, policy_version TEXT
);
CREATE INDEX IF NOT EXISTS served_by_request ON served (request_id);
CREATE TABLE IF NOT EXISTS idempotency (scoped_key TEXT PRIMARY KEY, event_id TEXT NOT NULL, digest TEXT NOT NULL);
"""


class SpoolFull(Exception):
    """The local log holds as much undelivered data as it may; try again later."""


class IdempotencyConflict(Exception):
    """An idempotency key was reused for different content."""


@dataclass(frozen=True)
class Served:
    """Who was served a choice, and as part of which request."""

    request_id: str
    caller: str
    policy_version: str | None


@dataclass(frozen=True)
class Submission:
    """One feedback event to accept, with its optional idempotency key."""

    event: object
    idempotency_key: str | None = None

    def digest(self) -> str:
        # The content, without what differs between two submissions of the same thing.
        body = self.event.model_dump_json(exclude={"event_id", "timestamp"})
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Accepted:
    """The outcome of one submission."""

    event_id: str
    duplicate: bool


class _Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.events = Counter("alignloop_feedback_events", "Feedback events by type and outcome",
                              ["type", "outcome"], registry=registry)
        self.completions = Counter("alignloop_completion_events", "Served-completion events by outcome",
                                   ["outcome"], registry=registry)
        self.sent = Counter("alignloop_kafka_sent_events", "Events acknowledged by Kafka", registry=registry)
        self.failures = Counter("alignloop_kafka_send_failures", "Failed attempts to deliver a batch to Kafka",
                                registry=registry)
        self.spool_events = Gauge("alignloop_spool_events", "Events accepted but not yet delivered "
                                   "(to Kafka; embedded: to the trainer)", registry=registry)
        self.spool_bytes = Gauge("alignloop_spool_bytes", "Bytes accepted but not yet delivered "
                                  "(to Kafka; embedded: to the trainer)", registry=registry)
        self.kafka_up = Gauge("alignloop_kafka_connected", "1 while the shipper reaches Kafka", registry=registry)


class FeedbackRecorder:
    """Accepts events durably and delivers them to Kafka (or keeps them, embedded)."""

    def __init__(self, config: FeedbackConfig, state_dir: Path, registry: CollectorRegistry,
                 consumer_groups: tuple[str, ...] = ()):
        """Embedded, `consumer_groups` are the readers (the trainer's group) whose commits let
        events be deleted from the log; with none, the log keeps everything."""
        self.config = config
        self.log = LocalLog(Path(state_dir) / "feedback" / "events.db", _INDEX_SCHEMA)
        self.metrics = _Metrics(registry)
        self.embedded = not config.kafka_bootstrap
        # Completions handed over but not yet committed: feedback may refer to them at once.
        self._pending: dict[str, Served] = {}
        self._pending_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._shipped = 0 if self.embedded else self.log.committed(SHIPPER_GROUP, ANY_TOPIC)
        events, size = self.log.stats(self._shipped)
        self._undelivered = [events, size]
        self._undelivered_lock = threading.Lock()  # the writer adds, the shipper or retention subtracts
        self._update_spool_gauges()
        self._threads = [threading.Thread(target=self._write_loop, name="feedback-writer", daemon=True)]
        if not self.embedded:
            self._wake = threading.Event()
            self._threads.append(threading.Thread(target=self._ship_loop, name="kafka-shipper", daemon=True))
        elif consumer_groups:
            self._groups = consumer_groups
            self._threads.append(threading.Thread(target=self._retain_loop, name="feedback-retention", daemon=True))
        for t in self._threads:
            t.start()
        if events and not self.embedded:
            log.info("feedback: %d events (%d bytes) from before the restart wait for Kafka", events, size)

    # ---- the request side ---------------------------------------------------------------------

    def record_completion(self, event: CompletionServed) -> None:
        """Hand over a served completion; never blocks. Dropped (and counted) if the spool is full."""
        value = event.to_bytes()
        if self._undelivered[1] + len(value) > self.config.max_spool_bytes:
            self.metrics.completions.labels("dropped_spool_full").inc()
            log.warning("feedback: spool full (%d bytes); completion %s not recorded", self._undelivered[1], event.request_id)
            return
        with self._pending_lock:
            for c in event.choices:
                self._pending[c.choice_id] = Served(event.request_id, event.caller, event.policy_version)
        self._queue.put(("completion", event, value))

    def served(self, choice_id: str) -> Served | None:
        """Who was served this choice id, or None if this gateway never served it."""
        with self._pending_lock:
            hit = self._pending.get(choice_id)
        if hit:
            return hit
        rows = self.log.query("SELECT request_id, caller, policy_version FROM served WHERE choice_id = ?", (choice_id,))
        return Served(*rows[0]) if rows else None

    def request_owner(self, request_id: str) -> Served | None:
        """Who made a request, or None if this gateway never served it."""
        with self._pending_lock:
            hit = next((s for s in self._pending.values() if s.request_id == request_id), None)
        if hit:
            return hit
        rows = self.log.query("SELECT request_id, caller, policy_version FROM served WHERE request_id = ? LIMIT 1",
                              (request_id,))
        return Served(*rows[0]) if rows else None

    async def submit(self, items: list[Submission]) -> list[Accepted]:
        """Accept feedback events, all or none, once they are durable."""
        size = sum(len(i.event.to_bytes()) for i in items)
        if self._undelivered[1] + size > self.config.max_spool_bytes:
            raise SpoolFull(f"{self._undelivered[1]} bytes wait for delivery")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(("feedback", items, future))
        return await asyncio.wrap_future(future)

    # ---- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(batch) < 512:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._write(batch)

    def _write(self, batch: list) -> None:
        results: list[tuple[concurrent.futures.Future, object]] = []
        added = [0, 0]
        try:
            with self.log.transaction() as tx:
                for item in batch:
                    if item[0] == "completion":
                        _, event, value = item
                        self._append_completion(tx, event, value)
                        added[0] += 1
                        added[1] += len(value)
                    else:
                        _, items, future = item
                        tx.cursor.execute("SAVEPOINT submission")
                        try:
                            outcome = self._append_feedback(tx, items, added)
                            tx.cursor.execute("RELEASE submission")
                        except IdempotencyConflict as exc:
                            tx.cursor.execute("ROLLBACK TO submission")
                            tx.cursor.execute("RELEASE submission")
                            outcome = exc
                        results.append((future, outcome))
        except Exception as exc:  # the disk failed us: nothing in this batch is accepted
            log.exception("feedback: could not write %d items to the local log", len(batch))
            for item in batch:
                if item[0] == "feedback":
                    item[2].set_exception(exc)
            self.metrics.completions.labels("failed").inc(sum(1 for i in batch if i[0] == "completion"))
            return
        finally:
            with self._pending_lock:
                for item in batch:
                    if item[0] == "completion":
                        for c in item[1].choices:
                            self._pending.pop(c.choice_id, None)
        self._count_undelivered(added[0], added[1])
        self.metrics.completions.labels("recorded").inc(sum(1 for i in batch if i[0] == "completion"))
        for future, outcome in results:
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if not self.embedded:
            self._wake.set()

    def _append_completion(self, tx: Transaction, event: CompletionServed, value: bytes) -> None:
        tx.append(topic_for(event), event.key(), value)
        tx.cursor.executemany(
            "INSERT OR IGNORE INTO served (choice_id, request_id, caller, policy_version) VALUES (?, ?, ?, ?)",
            [(c.choice_id, event.request_id, event.caller, event.policy_version) for c in event.choices])

    def _append_feedback(self, tx: Transaction, items: list[Submission], added: list[int]) -> list[Accepted]:
        out = []
        for item in items:
            if item.idempotency_key is not None:
                row = tx.cursor.execute("SELECT event_id, digest FROM idempotency WHERE scoped_key = ?",
                                        (item.idempotency_key,)).fetchone()
                if row is not None:
                    if row[1] != item.digest():
                        raise IdempotencyConflict(f"idempotency key {item.idempotency_key.split(':', 1)[-1]!r} "
                                                  "was used before for different feedback")
                    out.append(Accepted(row[0], duplicate=True))
                    continue
                tx.cursor.execute("INSERT INTO idempotency (scoped_key, event_id, digest) VALUES (?, ?, ?)",
                                  (item.idempotency_key, item.event.event_id, item.digest()))
            value = item.event.to_bytes()
            tx.append(topic_for(item.event), item.event.key(), value)
            added[0] += 1
            added[1] += len(value)
            out.append(Accepted(item.event.event_id, duplicate=False))
        return out

    # ---- the shipper thread -------------------------------------------------------------------

    def _connect(self):
        from kafka import KafkaProducer
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        timeout_ms = int(self.config.kafka_timeout_s * 1000)
        admin = KafkaAdminClient(bootstrap_servers=self.config.kafka_bootstrap, request_timeout_ms=timeout_ms)
        try:
            existing = set(admin.list_topics())
            missing = [NewTopic(t, self.config.partitions, self.config.replication_factor)
                       for t in ALL_TOPICS if t not in existing]
            if missing:
                try:
                    admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()
        return KafkaProducer(
            bootstrap_servers=self.config.kafka_bootstrap, acks="all", enable_idempotence=True,
            linger_ms=5, max_block_ms=timeout_ms, request_timeout_ms=timeout_ms,
            delivery_timeout_ms=2 * timeout_ms, reconnect_backoff_max_ms=1000,
        )

    def _ship_loop(self) -> None:
        producer, backoff = None, 0.5
        while not self._stop.is_set():
            batch = self.log.read(self._shipped, limit=1000)
            if not batch:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                if producer is None:
                    producer = self._connect()
                    log.info("feedback: connected to Kafka at %s", self.config.kafka_bootstrap)
                    self.metrics.kafka_up.set(1)
                futures = [producer.send(r.topic, key=r.key, value=r.value) for r in batch]
                producer.flush(timeout=self.config.kafka_timeout_s * 2)
                for f in futures:
                    f.get(timeout=0)
            except Exception as exc:
                # Some of the batch may have arrived: sending it again can duplicate, never lose.
                # Consumers de-duplicate by event id.
                self.metrics.failures.inc()
                self.metrics.kafka_up.set(0)
                log.warning("feedback: Kafka unreachable (%s: %s); %d events wait in the spool, retrying in %.1fs",
                            type(exc).__name__, exc, self._undelivered[0], backoff)
                if producer is not None:
                    try:
                        producer.close(timeout=0)
                    except Exception:
                        pass
                    producer = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            self._shipped = batch[-1].offset + 1
            self.log.commit(SHIPPER_GROUP, ANY_TOPIC, self._shipped)
            self.log.delete_before(self._shipped)
            self.metrics.sent.inc(len(batch))
            self._count_undelivered(-len(batch), -sum(len(r.value) for r in batch))
        if producer is not None:
            producer.close(timeout=5)

    # ---- embedded retention --------------------------------------------------------------------

    def _retain_loop(self) -> None:
        # Embedded, this log is the topic the trainer reads. Once every named group has committed
        # a record, the trainer has it in its own dataset store, so it can go: the spool then
        # measures what the trainer has yet to take, as it measures what Kafka has yet to take
        # otherwise, and a long-running single-machine setup neither fills the disk nor hits
        # max_spool_bytes. A group that never committed keeps everything (nothing is lost).
        retained: dict[str, int] = {}
        while not self._stop.wait(_RETENTION_EVERY_S):
            try:
                for topic in ALL_TOPICS:
                    floor = min(self.log.committed(g, topic) for g in self._groups)
                    if floor <= retained.get(topic, 0):
                        continue
                    events, size = self.log.delete_topic_before(topic, floor)
                    retained[topic] = floor
                    self._count_undelivered(-events, -size)
            except Exception:  # a busy or failing disk: try again next time, never stop serving
                log.exception("feedback: could not remove consumed events from the local log")

    def _count_undelivered(self, events: int, size: int) -> None:
        with self._undelivered_lock:
            self._undelivered[0] += events
            self._undelivered[1] += size
        self._update_spool_gauges()

    def _update_spool_gauges(self) -> None:
        self.metrics.spool_events.set(self._undelivered[0])
        self.metrics.spool_bytes.set(self._undelivered[1])

    def undelivered(self) -> int:
        """Events accepted but not yet delivered to Kafka (embedded: not yet consumed by the trainer)."""
        return self._undelivered[0]

    def close(self, drain_timeout: float = 10.0) -> None:
        """Finish writing what was handed over; give the shipper a moment to deliver."""
        deadline = time.monotonic() + drain_timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.embedded:
            while self._undelivered[0] and time.monotonic() < deadline:
                time.sleep(0.05)
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.log.close()
