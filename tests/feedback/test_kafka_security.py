"""Kafka with authentication: the security settings reach the gateway's producer and the trainer's
consumer; wrong credentials keep events waiting in the spool (and say so), never lose them."""

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from core.config import FeedbackConfig
from core.paths import StatePaths
from feedback.recorder import FeedbackRecorder
from feedback.source import KafkaSource
from tests.feedback.test_recorder import completion, rating, wait_for


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    from deploy.kafka.broker import KafkaBroker

    broker = KafkaBroker(tmp_path_factory.mktemp("sasl"), sasl_users={"gateway": "gateway-secret"}).start()
    yield broker
    broker.stop()


def sasl_config(broker, password: str) -> FeedbackConfig:
    return FeedbackConfig(
        kafka_bootstrap=broker.bootstrap,
        kafka_timeout_s=3,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="gateway",
        sasl_password=password,
    )


def test_sasl_credentials_reach_producer_and_consumer(sasl_broker, tmp_path):
    wrong = FeedbackRecorder(
        sasl_config(sasl_broker, "wrong"),
        StatePaths(tmp_path / "a").feedback_log,
        registry := CollectorRegistry(),
    )
    try:
        wrong.record_completion(completion("sasl-0"))
        wait_for(
            lambda: (registry.get_sample_value("alignloop_kafka_send_failures_total") or 0) >= 1, timeout=60
        )
        assert wrong.undelivered() == 1 and registry.get_sample_value("alignloop_kafka_connected") in (
            None,
            0.0,
        )
    finally:
        wrong.close(drain_timeout=0)

    rec = FeedbackRecorder(
        sasl_config(sasl_broker, "gateway-secret"),
        StatePaths(tmp_path / "a").feedback_log,
        CollectorRegistry(),
    )
    try:
        ids = {a.event_id for a in asyncio.run(rec.submit([rating("sasl-0")]))}
        wait_for(lambda: rec.undelivered() == 0, timeout=60)  # the one that waited goes too
    finally:
        rec.close()
    source = KafkaSource(sasl_config(sasl_broker, "gateway-secret"), "sasl-test")
    try:
        found, deadline = {}, time.monotonic() + 60
        while len(found) < 2 and time.monotonic() < deadline:
            found.update({d.event.event_id: d for d in source.poll(timeout_s=1.0) if d.event is not None})
    finally:
        source.close()
    assert ids <= found.keys() and any(d.event.type == "completion" for d in found.values())
