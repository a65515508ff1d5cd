"""Reading back what a gateway captured, from Kafka or from its embedded log."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaConsumer, TopicPartition

from core.config import FeedbackConfig
from feedback.source import open_source
from feedback.topics import ALL


def read_all_kafka(bootstrap: str) -> list:
    """Every record on the alignloop topics, with a plain kafka-python consumer (no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(t, p) for t in ALL for p in (consumer.partitions_for_topic(t) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out = []
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=1000).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def wait_for_events(gateway, kafka: str | None, wanted: set[str], timeout: float = 60) -> dict[str, object]:
    """Read events back through feedback.source (what the trainer uses) until all wanted ids are in."""
    source = open_source(FeedbackConfig(kafka_bootstrap=kafka), gateway.state_dir, f"test-{uuid.uuid4().hex}")
    found: dict[str, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while not wanted <= found.keys() and time.monotonic() < deadline:
            for d in source.poll(timeout_s=0.5):
                found[d.event.event_id] = d
            time.sleep(0.1)
    finally:
        source.close()
    return found
