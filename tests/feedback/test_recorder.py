"""The recorder on its own: a full spool refuses, a restarted recorder replays its spool, and the
embedded log lets go of what its readers (the trainer, the evidence feed) have consumed."""

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from core.config import FeedbackConfig
from core.paths import StatePaths
from feedback.events import CompletionServed, Rating, ServedChoice, keyed_event_id
from feedback.recorder import FeedbackRecorder
from feedback.submission import Accepted, SpoolFull, Submission
from feedback.topics import ALL as ALL_TOPICS
from feedback.topics import FEEDBACK
from tests.conftest import free_port
from tests.feedback.helpers import read_all_kafka


def completion(rid: str) -> CompletionServed:
    return CompletionServed(
        request_id=rid,
        route="completions",
        prompt="p",
        prompt_text="p",
        prompt_tokens=1,
        choices=[ServedChoice(choice_id=f"{rid}-0", text="t", completion_tokens=1)],
        sampling={},
        policy_version="v0001",
        caller="alice",
    )


def rating(rid: str) -> Submission:
    return Submission(Rating(request_id=rid, choice_id=f"{rid}-0", rating=1, rater="alice"))


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_full_spool_refuses_feedback_and_counts_dropped_completions(tmp_path):
    dead_broker = f"127.0.0.1:{free_port()}"
    registry = CollectorRegistry()
    rec = FeedbackRecorder(
        FeedbackConfig(kafka_bootstrap=dead_broker, max_spool_bytes=3000, kafka_timeout_s=1),
        StatePaths(tmp_path).feedback_log,
        registry,
    )
    try:
        accepted = 0
        with pytest.raises(SpoolFull):
            for i in range(100):
                asyncio.run(rec.submit([rating(f"r{i}")]))
                accepted += 1
        assert 0 < accepted < 100
        assert rec.undelivered() == accepted
        rec.record_completion(completion("late"))
        assert (
            registry.get_sample_value("alignloop_completion_events_total", {"outcome": "dropped_spool_full"})
            == 1
        )
        assert registry.get_sample_value("alignloop_spool_events") == accepted
        wait_for(lambda: registry.get_sample_value("alignloop_kafka_send_failures_total") >= 1)
    finally:
        rec.close(drain_timeout=0)


def test_spool_is_replayed_after_a_restart(tmp_path, kafka_broker):
    config = FeedbackConfig(kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_timeout_s=1)
    rec = FeedbackRecorder(config, StatePaths(tmp_path).feedback_log, CollectorRegistry())
    rec.record_completion(completion("replay-1"))
    ids = [a.event_id for a in asyncio.run(rec.submit([rating("replay-1"), rating("replay-1")]))]
    wait_for(lambda: rec.undelivered() == 3)
    rec.close(drain_timeout=0)

    # Same spool, now with a reachable broker: what waited goes out, in order.
    rec = FeedbackRecorder(
        config.model_copy(update={"kafka_bootstrap": kafka_broker.bootstrap}),
        StatePaths(tmp_path).feedback_log,
        CollectorRegistry(),
    )
    try:
        wait_for(lambda: rec.undelivered() == 0)
    finally:
        rec.close()
    from feedback.events import parse_event

    events = [parse_event(r.value) for r in read_all_kafka(kafka_broker.bootstrap)]
    mine = [e for e in events if e.request_id == "replay-1"]
    assert [e.type for e in mine].count("completion") == 1
    assert {e.event_id for e in mine if e.type == "rating"} == set(ids)


def test_embedded_log_deletes_what_its_readers_committed_and_accepts_again(tmp_path):
    from feedback.source import LocalLogSource

    registry = CollectorRegistry()
    rec = FeedbackRecorder(
        FeedbackConfig(max_spool_bytes=3000),
        StatePaths(tmp_path).feedback_log,
        registry,
        consumer_groups={"trainer": ALL_TOPICS, "evidence": (FEEDBACK,)},
    )
    try:
        rec.record_completion(completion("kept"))
        accepted = 0
        with pytest.raises(SpoolFull):
            for i in range(100):
                asyncio.run(rec.submit([rating(f"r{i}")]))
                accepted += 1
        assert rec.undelivered() == accepted + 1
        time.sleep(2)  # no group has committed anything: nothing may be deleted
        assert rec.undelivered() == accepted + 1 and rec.log.stats()[0] == accepted + 1

        trainer = LocalLogSource(tmp_path / "feedback" / "events.db", "trainer")
        consumed = trainer.poll(max_records=1000)
        trainer.commit()
        trainer.close()
        assert len(consumed) == accepted + 1
        # The completion goes (only the trainer reads its topic); the feedback waits for the
        # gateway's evidence feed too, which reads the feedback topic alone.
        wait_for(lambda: rec.undelivered() == accepted)
        evidence = LocalLogSource(tmp_path / "feedback" / "events.db", "evidence", (FEEDBACK,))
        assert len(evidence.poll(max_records=1000)) == accepted
        evidence.commit()
        evidence.close()
        wait_for(lambda: rec.undelivered() == 0)
        assert rec.log.stats() == (0, 0)
        assert registry.get_sample_value("alignloop_spool_bytes") == 0
        asyncio.run(rec.submit([rating("kept")]))  # room again
        assert rec.undelivered() == 1
    finally:
        rec.close(drain_timeout=0)


def test_one_callers_idempotency_keys_cannot_fill_the_shared_spool(tmp_path):
    """A flood of distinct idempotency keys from one caller keeps at most its own bound of index rows
    (the oldest are forgotten); another caller's keys are untouched, and a retry of a forgotten key
    is still the same event (its id comes from the key)."""
    registry = CollectorRegistry()
    rec = FeedbackRecorder(
        FeedbackConfig(max_idempotency_keys_per_caller=50), StatePaths(tmp_path).feedback_log, registry
    )

    def keyed(caller: str, key: str, rid: str) -> Submission:
        event = Rating(
            request_id=rid,
            choice_id=f"{rid}-0",
            rating=1,
            rater=caller,
            event_id=keyed_event_id(f"{caller}:{key}"),
        )
        return Submission(event, f"{caller}:{key}")

    try:
        honest = asyncio.run(rec.submit([keyed("bob", "b-1", "rb")]))[0]
        for i in range(0, 400, 20):  # batches, as a flood would send them
            asyncio.run(rec.submit([keyed("mallory", f"k-{i + j}", f"r{i + j}") for j in range(20)]))
        rows = dict(
            rec.log.query(
                "SELECT substr(scoped_key, 1, instr(scoped_key, ':') - 1), COUNT(*) "
                "FROM idempotency GROUP BY 1"
            )
        )
        assert rows == {"mallory": 50, "bob": 1}, rows
        index = registry.get_sample_value("alignloop_spool_index_bytes")
        assert 0 < index < 51 * 200, index
        assert asyncio.run(rec.submit([keyed("bob", "b-1", "rb")]))[0] == Accepted(
            honest.event_id, duplicate=True
        )
        again = asyncio.run(rec.submit([keyed("mallory", "k-0", "r0")]))[0]  # forgotten: stored again ...
        assert again.event_id == keyed_event_id("mallory:k-0"), "... as the same event"
    finally:
        rec.close(drain_timeout=0)
