"""Reading the captured events back: one interface over Kafka and over the embedded local log.

A consumer polls events, processes them, and commits only afterwards, so a crash in between
re-delivers rather than loses; consumers de-duplicate by event id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.config import FeedbackConfig
from core.paths import StatePaths
from feedback.events import parse_event
from feedback.kafka_clients import connection_kwargs
from feedback.local_log import LocalLog
from feedback.topics import ALL as ALL_TOPICS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivered:
    """A record as read from a topic: its event, or (a malformed record) why it is none."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    event: object | None
    error: str | None = None
    raw: bytes | None = None


class EventSource(Protocol):
    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Delivered]:
        """The next events (possibly none)."""

    def commit(self) -> None:
        """Mark everything polled so far as processed."""

    def lag(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition), how many events the group has not committed yet (consumer lag)."""

    def close(self) -> None:
        """Release the connection."""


def _delivered(topic: str, partition: int, offset: int, key: bytes | None, raw: bytes | None) -> Delivered:
    # One bad record must not stop the loop: it is handed on as a dead letter, with its offset.
    try:
        if raw is None:
            raise ValueError("the record has no value")
        return Delivered(topic, partition, offset, key, parse_event(raw))
    except (ValueError, TypeError) as exc:
        log.error("feedback: unreadable record at %s[%d]@%d: %s", topic, partition, offset, exc)
        return Delivered(topic, partition, offset, key, None, f"{type(exc).__name__}: {exc}"[:500], raw)


class TopicMissing(RuntimeError):
    """A topic to read from all of does not exist yet (nothing was ever written to it)."""


class KafkaSource:
    """A Kafka consumer group on the alignloop topics. `whole`: this reader is its group's only
    member and takes every partition itself (no group rebalancing: a group that joins while the
    topics are being created can wait for ever for its assignment), committing to the group as usual."""

    def __init__(
        self, config: FeedbackConfig, group: str, topics: tuple[str, ...] = ALL_TOPICS, whole: bool = False
    ):
        from kafka import KafkaConsumer, TopicPartition

        kwargs = dict(
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **connection_kwargs(config),
        )
        if not whole:
            self._consumer = KafkaConsumer(*topics, **kwargs)
            return
        self._consumer = KafkaConsumer(**kwargs)
        parts = []
        for topic in topics:
            found = self._consumer.partitions_for_topic(topic)
            if not found:
                self._consumer.close()
                raise TopicMissing(f"topic {topic} does not exist yet")
            parts += [TopicPartition(topic, p) for p in sorted(found)]
        self._consumer.assign(parts)

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Delivered]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = []
        for tp, records in batches.items():
            out += [_delivered(tp.topic, tp.partition, r.offset, r.key, r.value) for r in records]
        return out

    def commit(self) -> None:
        self._consumer.commit()

    def lag(self) -> dict[tuple[str, int], int]:
        parts = list(self._consumer.assignment())
        if not parts:
            return {}
        end = self._consumer.end_offsets(parts)
        return {
            (tp.topic, tp.partition): max(0, end[tp] - (self._consumer.committed(tp) or 0)) for tp in parts
        }

    def close(self) -> None:
        self._consumer.close()


_QUIET_POLL_S = 0.05  # how often a waiting poll looks again at the local log (one indexed read)


class LocalLogSource:
    """A consumer group on the embedded local log."""

    def __init__(self, path: Path, group: str, topics: tuple[str, ...] = ALL_TOPICS):
        self._log = LocalLog(path)
        self._group = group
        self._topics = topics
        self._next = {t: self._log.committed(group, t) for t in topics}
        self._polled = dict(self._next)

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Delivered]:
        """The next events, waiting up to timeout_s for some as Kafka's poll does: a reader that
        loops on poll must not spin a core while the log is quiet."""
        deadline = time.monotonic() + timeout_s
        while not (out := self._read(max_records)) and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(_QUIET_POLL_S, left))
        return out

    def _read(self, max_records: int) -> list[Delivered]:
        out = []
        for topic in self._topics:
            for r in self._log.read(self._polled[topic], limit=max_records, topic=topic):
                self._polled[topic] = r.offset + 1
                out.append(_delivered(topic, 0, r.offset, r.key, r.value))
        return out

    def commit(self) -> None:
        for topic in self._topics:
            if self._polled[topic] != self._next[topic]:
                self._log.commit(self._group, topic, self._polled[topic])
        self._next = dict(self._polled)

    def lag(self) -> dict[tuple[str, int], int]:
        return {(topic, 0): self._log.count(topic, self._next[topic]) for topic in self._topics}

    def close(self) -> None:
        self._log.close()


def open_source(
    config: FeedbackConfig,
    state_dir: Path,
    group: str,
    topics: tuple[str, ...] = ALL_TOPICS,
    whole: bool = False,
) -> EventSource:
    """Kafka when a broker is configured, else the gateway's embedded log under state_dir (`whole`:
    see KafkaSource)."""
    if config.kafka_bootstrap:
        return KafkaSource(config, group, topics, whole)
    return LocalLogSource(StatePaths(Path(state_dir)).feedback_log, group, topics)
