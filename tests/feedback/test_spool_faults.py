"""The spool under hostile submissions and faults: refused bytes are not counted, a caller that
gives up never kills the writer, a record Kafka would refuse for ever does not block the rest,
malformed records never stop the trainer, and the index is pruned by age."""

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from core.config import FeedbackConfig, Settings
from core.paths import StatePaths
from core.supervision import SupervisedThread
from feedback.events import CompletionServed, Demonstration, Rating, ServedChoice
from feedback.local_log import LocalLog
from feedback.recorder import FeedbackRecorder
from feedback.submission import IdempotencyConflict, Submission
from feedback.topics import COMPLETIONS, FEEDBACK, topic_for
from tests.feedback.helpers import read_all_kafka
from tests.feedback.test_recorder import completion, wait_for


def rating(rid: str, value: int = 1, key: str | None = None) -> Submission:
    return Submission(Rating(request_id=rid, choice_id=f"{rid}-0", rating=value, rater="alice"), key)


def test_refused_submissions_do_not_count_against_the_spool(tmp_path):
    """Item 1: a submission rolled back on an idempotency conflict leaves the spool's size as it was."""
    registry = CollectorRegistry()
    rec = FeedbackRecorder(FeedbackConfig(), StatePaths(tmp_path).feedback_log, registry)
    try:
        asyncio.run(rec.submit([rating("r", 1, key="alice:k")]))
        before = registry.get_sample_value("alignloop_spool_bytes")
        for _ in range(20):
            demos = [Submission(Demonstration(request_id="r", response="x" * 16_000, author="alice"))] * 15
            with pytest.raises(IdempotencyConflict):
                asyncio.run(rec.submit([*demos, rating("r", -1, key="alice:k")]))
        assert registry.get_sample_value("alignloop_spool_bytes") == before
        assert rec.usage.has_room(rec.config.max_spool_bytes - before - rec.usage.index_bytes)
    finally:
        rec.close(drain_timeout=0)


def test_a_caller_that_gives_up_never_kills_the_writer(tmp_path):
    """Item 2: submissions whose awaiting request was cancelled are dropped, and the writer lives on."""
    rec = FeedbackRecorder(FeedbackConfig(), StatePaths(tmp_path).feedback_log, CollectorRegistry())

    async def scenario():
        tasks = [asyncio.create_task(rec.submit([rating(f"c{i}")])) for i in range(50)]
        await asyncio.sleep(0)  # queued ...
        for t in tasks:
            t.cancel()  # ... and abandoned, as a client hanging up or a server shutting down does
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.5)  # the writer meets the cancelled ones
        return await asyncio.wait_for(rec.submit([rating("after")]), timeout=20)

    try:
        accepted = asyncio.run(scenario())
        assert len(accepted) == 1 and not accepted[0].duplicate
        assert rec._writer._thread.is_alive()
    finally:
        rec.close(drain_timeout=0)


def test_a_record_kafka_would_refuse_goes_to_dead_letters_and_the_rest_flows(tmp_path, kafka_broker):
    """Item 2: a record above the size Kafka accepts is not retried for ever in front of the others."""
    registry = CollectorRegistry()
    rec = FeedbackRecorder(
        FeedbackConfig(kafka_bootstrap=kafka_broker.bootstrap, kafka_timeout_s=5),
        StatePaths(tmp_path).feedback_log,
        registry,
    )
    huge = CompletionServed(
        request_id="huge-1",
        route="completions",
        prompt="p",
        prompt_text="p",
        prompt_tokens=1,
        choices=[
            ServedChoice(choice_id=f"huge-1-{i}", text="y" * 200_000, completion_tokens=1) for i in range(6)
        ],
        sampling={},
        policy_version="v0001",
        caller="alice",
    )
    try:
        rec.record_completion(huge)
        ids = [a.event_id for a in asyncio.run(rec.submit([rating("after-huge"), rating("after-huge", -1)]))]
        wait_for(lambda: rec.undelivered() == 0, timeout=60)
        rows = rec.log.query("SELECT offset, topic, reason FROM dead_letters")
        assert len(rows) == 1 and rows[0][1] == COMPLETIONS and "max_record_bytes" in rows[0][2]
        assert registry.get_sample_value("alignloop_feedback_dead_letters_total") == 1
    finally:
        rec.close()
    from feedback.events import parse_event

    delivered = {
        parse_event(r.value).event_id for r in read_all_kafka(kafka_broker.bootstrap) if r.topic == FEEDBACK
    }
    assert set(ids) <= delivered


def test_malformed_records_become_dead_letters_and_consumption_goes_on(tmp_path):
    """Item 10: null, non-objects, garbage and invalid events on a topic never stop the trainer."""
    from trainer.service import TrainerService

    settings = Settings(state_dir=tmp_path)
    settings.train.loop.metrics_port = 0
    settings.train.ppo.ptx_coef = 0.0
    log = LocalLog(settings.paths.feedback_log)
    bad = [
        b"null",
        b"[1, 2]",
        b"\xff\xfe not json",
        b'{"schema_version": 1, "type": "rating"}',
        b"[" * 100_000,
    ]
    offsets = log.append([(FEEDBACK, b"k", value) for value in bad])
    good = [completion("good-1"), Rating(request_id="good-1", choice_id="good-1-0", rating=1, rater="alice")]
    log.append([(topic_for(e), e.key(), e.to_bytes()) for e in good])
    service = TrainerService(settings)
    try:
        while service.consume_once(timeout_s=0.1):
            pass
        assert sum(service.refresh_lag().values()) == 0
        assert service.store.counts()["completions"] == 1
        letters = service.store.dead_letters()
        assert [d["offset"] for d in letters] == offsets and all(d["reason"] for d in letters)
    finally:
        service.close()


def _keys(rec: FeedbackRecorder) -> set[str]:
    return {k for (k,) in rec.log.query("SELECT scoped_key FROM idempotency")}


def test_the_idempotency_index_is_pruned_by_age_and_its_size_counts(tmp_path):
    """Item 11: idempotency keys older than the retention go (a recorder prunes at start and then
    every few minutes), and their bytes leave the spool's count with them."""
    config = FeedbackConfig(index_retention_days=1)
    rec = FeedbackRecorder(config, StatePaths(tmp_path).feedback_log, CollectorRegistry())
    old = Rating(
        request_id="old", choice_id="old-0", rating=1, rater="alice", timestamp=time.time() - 3 * 86400
    )
    asyncio.run(rec.submit([Submission(old, "alice:stale"), rating("new", key="alice:fresh")]))
    rec.close()
    with_old = FeedbackRecorder(
        config.model_copy(update={"index_retention_days": 10}),
        StatePaths(tmp_path).feedback_log,
        CollectorRegistry(),
    )
    grown = with_old.usage.index_bytes
    assert _keys(with_old) == {"alice:stale", "alice:fresh"} and grown > 0
    with_old.close()

    rec = FeedbackRecorder(config, StatePaths(tmp_path).feedback_log, CollectorRegistry())
    try:
        wait_for(lambda: _keys(rec) == {"alice:fresh"})
        assert 0 < rec.usage.index_bytes < grown
    finally:
        rec.close(drain_timeout=0)


def test_a_supervised_thread_survives_its_failures_and_reports_them():
    failures, runs = [], []

    def body(stop):
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("disk full")
        stop.wait()

    thread = SupervisedThread("flaky", body, failures.append)
    try:
        wait_for(lambda: len(runs) >= 3, timeout=10)
        assert failures == ["flaky", "flaky"] and thread.is_alive()
    finally:
        thread.stop()
