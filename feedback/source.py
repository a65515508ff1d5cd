"""Reading the captured events back: one interface over Kafka and over the embedded local log.

A consumer polls events, processes them, and commits only afterwards, so a crash in between
re-delivers rather than loses; consumers de-duplicate by event id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.config import FeedbackConfig
from core.paths import StatePaths
from feedback.events import parse_event
from feedback.local_log import LocalLog
from feedback.topics import ALL as ALL_TOPICS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivered:
    """An event as read from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    event: object


class EventSource(Protocol):
    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Delivered]:
        """The next events (possibly none)."""

    def commit(self) -> None:
        """Mark everything polled so far as processed."""

    def lag(self) -> dict[str, int]:
        """Per topic, how many events the group has not committed yet (consumer lag)."""

    def close(self) -> None:
        """Release the connection."""


def _parse(topic: str, raw: bytes) -> object | None:
    try:
        return parse_event(raw)
    except ValueError as exc:  # keep going: one bad record must not stop the loop
        log.error("feedback: skipping an unreadable record on %s: %s", topic, exc)
        return None


class KafkaSource:
    """A Kafka consumer group on the alignloop topics."""

    def __init__(self, bootstrap: str, group: str, topics: tuple[str, ...] = ALL_TOPICS):
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group,
                                       enable_auto_commit=False, auto_offset_reset="earliest")

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Delivered]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = []
        for tp, records in batches.items():
            for r in records:
                event = _parse(tp.topic, r.value)
                if event is not None:
                    out.append(Delivered(tp.topic, tp.partition, r.offset, r.key, event))
        return out

    def commit(self) -> None:
        self._consumer.commit()

    def lag(self) -> dict[str, int]:
        parts = list(self._consumer.assignment())
        if not parts:
            return {}
        end = self._consumer.end_offsets(parts)
        out: dict[str, int] = {}
        for tp in parts:
            out[tp.topic] = out.get(tp.topic, 0) + max(0, end[tp] - (self._consumer.committed(tp) or 0))
        return out

    def close(self) -> None:
        self._consumer.close()


class LocalLogSource:
    """A consumer group on the embedded local log."""

    def __init__(self, path: Path, group: str, topics: tuple[str, ...] = ALL_TOPICS):
        self._log = LocalLog(path)
        self._group = group
        self._topics = topics
        self._next = {t: self._log.committed(group, t) for t in topics}
        self._polled = dict(self._next)

    def poll(self, timeout_s: float = 1.0, max_records: int = 500) -> list[Delivered]:
        out = []
        for topic in self._topics:
            for r in self._log.read(self._polled[topic], limit=max_records, topic=topic):
                self._polled[topic] = r.offset + 1
                event = _parse(topic, r.value)
                if event is not None:
                    out.append(Delivered(topic, 0, r.offset, r.key, event))
        return out

    def commit(self) -> None:
        for topic in self._topics:
            if self._polled[topic] != self._next[topic]:
                self._log.commit(self._group, topic, self._polled[topic])
        self._next = dict(self._polled)

    def lag(self) -> dict[str, int]:
        return {topic: self._log.count(topic, self._next[topic]) for topic in self._topics}

    def close(self) -> None:
        self._log.close()


def open_source(config: FeedbackConfig, state_dir: Path, group: str) -> EventSource:
    """Kafka when a broker is configured, else the gateway's embedded log under state_dir."""
    if config.kafka_bootstrap:
        return KafkaSource(config.kafka_bootstrap, group)
    return LocalLogSource(StatePaths(Path(state_dir)).feedback_log, group)
