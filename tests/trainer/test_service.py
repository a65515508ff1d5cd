"""The trainer's consumption: a crash between storing and committing loses and doubles nothing;
consumer lag is measured on the embedded log and on Kafka."""

import time
import uuid

import pytest
from prometheus_client import generate_latest

from core.config import Settings
from feedback.events import Comparison, CompletionServed, ServedChoice
from feedback.local_log import LocalLog
from feedback.topics import COMPLETIONS, FEEDBACK, topic_for
from trainer.service import TrainerService


def events(n: int) -> list:
    out = []
    for i in range(n):
        rid = f"chatcmpl-{i}"
        out.append(
            CompletionServed(
                request_id=rid,
                route="chat",
                messages=[{"role": "user", "content": f"Describe a fox {i}."}],
                prompt_text="x",
                prompt_tokens=3,
                sampling={},
                policy_version="v0001",
                caller="a",
                choices=[
                    ServedChoice(choice_id=f"{rid}-{k}", text=f"answer {k}", completion_tokens=2)
                    for k in range(3)
                ],
            )
        )
        out.append(Comparison(request_id=rid, ranking=[[f"{rid}-2"], [f"{rid}-0", f"{rid}-1"]], rater="a"))
    return out


def test_crash_before_commit_redelivers_and_nothing_doubles(tmp_path):
    settings = Settings(state_dir=tmp_path)
    settings.train.loop.metrics_port = 0
    settings.train.ppo.ptx_coef = 0.0  # consuming only: no pretraining text needed
    log = LocalLog(tmp_path / "feedback" / "events.db")
    batch = events(30)
    log.append([(topic_for(e), e.key(), e.to_bytes()) for e in batch])

    crashed = TrainerService(settings)
    crashed.store.store(crashed.source.poll())  # stored ... and the process dies before commit
    crashed.close()

    service = TrainerService(settings)
    assert service.refresh_lag() == {COMPLETIONS: 30, FEEDBACK: 30}  # stored, but never committed
    while service.consume_once(timeout_s=0.1):
        pass
    assert service.refresh_lag() == {COMPLETIONS: 0, FEEDBACK: 0}
    assert service.store.counts() == {"completions": 30, "comparisons": 30, "events": 60}
    ids = service.store.comparison_ids()
    assert len(ids) == len(set(ids)) == 30
    rankings = service.store.rankings()
    assert len(rankings) == 30
    assert rankings[0].responses == ["answer 2", "answer 0", "answer 1"] and rankings[0].ranking == [
        [0],
        [1, 2],
    ]
    # More events later are picked up from the committed position, once.
    log.append([(topic_for(e), e.key(), e.to_bytes()) for e in batch[:4]])  # re-sent duplicates
    while service.consume_once(timeout_s=0.1):
        pass
    assert service.store.counts()["comparisons"] == 30
    service.close()


def test_consumer_lag_on_kafka(kafka_broker, tmp_path):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    for e in events(5):
        producer.send(topic_for(e), key=e.key(), value=e.to_bytes())
    producer.flush()
    producer.close()
    settings = Settings(state_dir=tmp_path)
    settings.train.loop.metrics_port = 0
    settings.train.ppo.ptx_coef = 0.0  # consuming only: no pretraining text needed
    settings.train.loop.consume_batch = 1
    settings.train.loop.group = f"lag-test-{uuid.uuid4().hex}"  # a new group starts from the beginning
    settings.feedback.kafka_bootstrap = kafka_broker.bootstrap
    service = TrainerService(settings)
    try:
        deadline = time.monotonic() + 60
        while not service.consume_once(timeout_s=0.5):  # the first polls may only join the group
            assert time.monotonic() < deadline, "nothing consumed from Kafka"
        lag = service.refresh_lag()
        assert set(lag) == {COMPLETIONS, FEEDBACK} and sum(lag.values()) >= 9, lag  # 10 sent, 1 committed
        service.cfg.consume_batch = 500  # the session's topics may hold other tests' events too
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and sum(service.refresh_lag().values()):
            service.consume_once(timeout_s=0.2)
        assert service.refresh_lag() == {COMPLETIONS: 0, FEEDBACK: 0}
        exported = generate_latest(service.metrics_registry).decode()
        partitions = {
            line.split('partition="')[1].split('"')[0]
            for line in exported.splitlines()
            if line.startswith("alignloop_trainer_consumer_lag{partition=") and COMPLETIONS in line
        }
        assert partitions == {"0", "1", "2"}, exported  # per partition: the topics have 3
    finally:
        service.close()


@pytest.mark.parametrize("publish", ["merged", "adapter"])
def test_rounds_with_lora_publish_versions_and_continue_the_adapter(tiny_model_dir, tmp_path, publish):
    """The trainer service with train.lora on: each round's policy is published merged (an ordinary
    checkpoint) or as its adapter on the SFT version, and the next round goes on training the
    promoted round's adapter on the SFT base."""
    from safetensors.torch import load_file

    from registry.store import PolicyRegistry
    from registry.validation import validate_adapter, validate_checkpoint
    from tests.trainer.test_crash import logged_feedback

    settings = Settings(state_dir=tmp_path)
    settings.train.loop.metrics_port = 0
    settings.train.lora.enabled = True
    settings.train.lora.publish = publish
    settings.train.ppo.ptx_coef = 0.0
    settings.promotion.mode = "direct"  # round 2 goes on from round 1's version only once it serves
    loop, ppo, rm = settings.train.loop, settings.train.ppo, settings.train.rm
    loop.min_new_comparisons, loop.rm_max_steps, loop.gate_margin, loop.kl_budget = 10, 4, -1000.0, 1000.0
    loop.min_judge_accuracy = 0.0  # about LoRA rounds, not about what the gate accepts
    ppo.iterations, ppo.rollout_batch, ppo.minibatch, ppo.max_new_tokens = 2, 8, 4, 8
    ppo.rollout_engine, rm.batch_size = "transformers", 4
    registry = PolicyRegistry(settings.paths.registry)
    registry.publish(tiny_model_dir, source="tiny-model", make_current=True)
    log = LocalLog(settings.paths.feedback_log)
    events = logged_feedback(40)
    log.append([(topic_for(e), e.key(), e.to_bytes()) for e in events[:40]])
    service = TrainerService(settings)
    try:
        service.catch_up()
        first = service.run_round()
        log.append([(topic_for(e), e.key(), e.to_bytes()) for e in events[40:]])
        service.catch_up()
        second = service.run_round()
    finally:
        service.close()
    assert (first["decision"], second["decision"]) == ("promoted", "promoted")
    v2, v3 = registry.info(first["version"]), registry.info(second["version"])
    # Reward-hacking signals: round 2's RM scores v2's answers against what round 1's RM gave them.
    gate = v3.extra["gate"]
    assert gate["rm_score_drift"] == pytest.approx(
        gate["serving_reward"] - v2.extra["gate"]["candidate_reward"]
    )
    assert "rm_score_drift" not in v2.extra["gate"]  # SFT had no gate of its own
    exported = generate_latest(service.metrics_registry).decode()
    for version in (v2.name, v3.name):
        assert f'alignloop_trainer_version_kl_from_sft{{version="{version}"}}' in exported
        tokens = registry.info(version).extra["gate"]["candidate_answer_tokens"]
        assert 0 < tokens <= 2 * settings.train.ppo.max_new_tokens  # re-tokenised text: about the same
        assert f'alignloop_trainer_version_answer_tokens{{version="{version}"}} {tokens}' in exported
    assert v2.extra["policy_init"] == str(registry.path("v0001")) and v2.extra["lora_adapter"]
    # Round 1 trained on all 20 rankings, the conversations' (every third) among them.
    data = v2.extra["data"]
    assert data["rankings"] + data["judge_rankings"] == 20
    # A conversation is a prompt of its own, apart from its last message asked alone.
    assert data["prompts"] == len({(len(e.messages), e.messages[-1]["content"]) for e in events[:40:2]})
    if publish == "merged":
        for name in (first["version"], second["version"]):
            validate_checkpoint(registry.path(name))
            assert not any("lora" in k for k in load_file(registry.path(name) / "model.safetensors"))
            assert registry.info(name).base is None
        continued = v2.extra["lora_adapter"]
    else:
        for info in (v2, v3):
            validate_adapter(registry.path(info.name))
            assert (info.base, info.lora_rank) == ("v0001", settings.train.lora.r)
            assert (
                "adapter_model.safetensors" in info.checksums
                and not (registry.path(info.name) / "config.json").exists()
            )
        continued = str(registry.path(v2.name))  # the published adapter itself
    assert v3.extra["policy_init"] == continued, "round 2 should go on training round 1's adapter"


def test_no_round_starts_while_the_last_candidate_is_on_canary(tmp_path, tiny_model_dir):
    """promotion = canary: the next round waits for people's decision on the proposed candidate
    (it would otherwise train from the version the candidate may replace), but not forever."""
    from registry.store import PolicyRegistry

    settings = Settings(state_dir=tmp_path)
    settings.train.loop.metrics_port = 0
    settings.train.ppo.ptx_coef = 0.0
    registry = PolicyRegistry(settings.paths.registry)
    registry.publish(tiny_model_dir, source="tiny-model", make_current=True)
    service = TrainerService(settings)
    try:
        assert not service.waiting_for_canary()
        candidate = registry.publish(tiny_model_dir, source="trainer", parent="v0001")
        registry.propose(candidate)
        assert service.waiting_for_canary()
        settings.promotion.max_canary_s = -300.0  # the canary's time limit is long past
        assert not service.waiting_for_canary(), "a gateway that never decides must not stop training"
        settings.promotion.max_canary_s = 3600.0
        registry.record_decision(candidate, {"decision": "rolled_back"})
        assert not service.waiting_for_canary()
        registry.propose(candidate)
        settings.promotion.mode = "direct"
        assert not service.waiting_for_canary()
    finally:
        service.close()
