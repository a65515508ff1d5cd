"""Prometheus metrics of feedback capture (registered on the gateway's registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class FeedbackMetrics:
    """Every metric the spool, its writer and its shipper export."""

    def __init__(self, registry: CollectorRegistry):
        self.events = Counter(
            "alignloop_feedback_events",
            "Feedback events by type and outcome",
            ["type", "outcome"],
            registry=registry,
        )
        self.completions = Counter(
            "alignloop_completion_events",
            "Served-completion events by outcome",
            ["outcome"],
            registry=registry,
        )
        self.sent = Counter("alignloop_kafka_sent_events", "Events acknowledged by Kafka", registry=registry)
        self.failures = Counter(
            "alignloop_kafka_send_failures", "Failed attempts to deliver a batch to Kafka", registry=registry
        )
        self.spool_events = Gauge(
            "alignloop_spool_events",
            "Events accepted but not yet delivered (to Kafka; embedded: to the trainer)",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "alignloop_spool_bytes",
            "Bytes accepted but not yet delivered (to Kafka; embedded: to the trainer)",
            registry=registry,
        )
        self.kafka_up = Gauge(
            "alignloop_kafka_connected", "1 while the shipper reaches Kafka", registry=registry
        )
        self.dead_letters = Counter(
            "alignloop_feedback_dead_letters",
            "Records Kafka would never accept, kept in the spool's dead_letters table",
            registry=registry,
        )
        self.index_bytes = Gauge(
            "alignloop_spool_index_bytes",
            "Bytes of the idempotency-key index (counted against the spool's cap)",
            registry=registry,
        )
