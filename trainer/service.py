"""The trainer service (`alignloop trainer`): consume feedback, retrain, gate, publish, promote.

loop: poll events -> store (de-duplicated) -> commit offsets
      when >= N new comparisons (or T seconds with any): one round
round: RM (warm start from the last) on all comparisons -> PPO-ptx from the serving policy on
       the collected prompts -> gate on held-out prompts -> publish the candidate with its
       lineage -> promote it (move CURRENT; the gateway follows) or keep it marked rejected
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from core.config import Settings
from core.failpoints import failpoint
from feedback.source import open_source
from registry.store import PolicyRegistry
from trainer.acquisition import labelling_uncertainty
from trainer.dataset_store import DatasetStore
from trainer.lora import ADAPTER_DIR, full_checkpoint
from trainer.round import RoundInputs, load_pretraining, split_for_judging, train_candidate
from trainer.runtime import Runtime

log = logging.getLogger(__name__)


class _Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.dataset = Gauge("alignloop_trainer_dataset", "Stored items by kind", ["kind"], registry=registry)
        self.pending = Gauge(
            "alignloop_trainer_new_comparisons", "Comparisons since the last round", registry=registry
        )
        self.lag = Gauge(
            "alignloop_trainer_consumer_lag",
            "Events on a topic partition not yet stored and committed",
            ["topic", "partition"],
            registry=registry,
        )
        self.consumed = Counter(
            "alignloop_trainer_consumed_events", "Events polled (before de-duplication)", registry=registry
        )
        self.rounds = Counter(
            "alignloop_trainer_rounds",
            "Rounds by gate decision (proposed: passed the gate, handed to the gateway's canary)",
            ["decision"],
            registry=registry,
        )
        self.round_seconds = Histogram(
            "alignloop_trainer_round_seconds",
            "Duration of a round",
            buckets=(10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.rm_accuracy = Gauge(
            "alignloop_trainer_rm_heldout_accuracy", "RM held-out pairwise accuracy", registry=registry
        )
        self.reward = Gauge(
            "alignloop_trainer_reward", "Mean RM score on held-out prompts", ["policy"], registry=registry
        )
        self.kl = Gauge(
            "alignloop_trainer_kl_from_sft", "Candidate's KL from SFT on held-out prompts", registry=registry
        )
        self.ptx = Gauge("alignloop_trainer_ptx_loss", "Candidate's pretraining LM loss", registry=registry)
        # Reward-hacking signals, per version the trainer made: KL from SFT and answer length
        # (sampled answers to held-out prompts), and the reward model's drift between rounds.
        self.version_kl = Gauge(
            "alignloop_trainer_version_kl_from_sft",
            "KL from SFT per answer (nats) of each version at its gate",
            ["version"],
            registry=registry,
        )
        self.version_answer_tokens = Gauge(
            "alignloop_trainer_version_answer_tokens",
            "Mean sampled answer length (tokens) of each version at its gate",
            ["version"],
            registry=registry,
        )
        self.rm_drift = Gauge(
            "alignloop_trainer_rm_score_drift",
            "This round's RM score of the serving version's answers minus the score it had at its own gate",
            registry=registry,
        )
        self.promoted = Gauge(
            "alignloop_trainer_last_promoted_info",
            "1 for the last promoted version",
            ["version"],
            registry=registry,
        )
        for decision in (
            "promoted",
            "proposed",
            "rejected",
        ):  # at 0 from the start: a rate of "no data" reads as broken
            self.rounds.labels(decision)
        self.dead_letters = Gauge(
            "alignloop_trainer_dead_letters",
            "Consumed records that were not events "
            "(kept with their offsets in the dataset's dead_letters table)",
            registry=registry,
        )


class TrainerService:
    """One trainer process: a consumer group member that trains and publishes."""

    def __init__(self, settings: Settings, metrics_registry: CollectorRegistry | None = None):
        self.settings = settings
        self.cfg = settings.train.loop
        self.work = settings.paths.trainer
        self.store = DatasetStore(settings.paths.dataset, per_user_cap=settings.train.loop.per_user_cap)
        self.pretraining, self.gate_pretraining = load_pretraining(settings)
        self.runtime = Runtime.resolve(settings.train)
        log.info("trainer: training on %s", self.runtime.describe())
        self.registry = PolicyRegistry(settings.paths.registry)
        self.source = open_source(settings.feedback, settings.state_dir, self.cfg.group)
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.metrics = _Metrics(self.metrics_registry)
        last = self.store.last_round()
        self._last_round_at = last["finished"] if last else time.time()
        # New trainable comparisons are counted after the last round's newest one (rounds recorded
        # before that was kept count from 0: one early round after an upgrade).
        self._last_round_seq = (last["last_seq"] or 0) if last else 0
        self._lag_at = 0.0
        self._refresh_gauges()

    def _refresh_gauges(self) -> dict[str, int]:
        counts = self.store.counts()
        for kind, n in counts.items():
            self.metrics.dataset.labels(kind).set(n)
        self.metrics.dead_letters.set(len(self.store.dead_letters()))
        self.metrics.pending.set(self.store.new_since(self._last_round_seq))
        return counts

    def refresh_lag(self) -> dict[str, int]:
        """Measure the consumer group's lag per partition and show it; returns it summed per topic."""
        per_topic: dict[str, int] = {}
        for (topic, partition), n in self.source.lag().items():
            self.metrics.lag.labels(topic, str(partition)).set(n)
            per_topic[topic] = per_topic.get(topic, 0) + n
        self._lag_at = time.monotonic()
        return per_topic

    def consume_once(self, timeout_s: float = 1.0) -> int:
        """Poll, store, then commit; returns the number of events polled."""
        batch = self.source.poll(timeout_s=timeout_s, max_records=self.cfg.consume_batch)
        if batch:
            self.store.store(batch)
            failpoint("trainer.consume.stored")
            self.source.commit()  # only now: a crash before this re-delivers, and the store skips repeats
            self.metrics.consumed.inc(len(batch))
            self._refresh_gauges()
        if time.monotonic() - self._lag_at > 5.0:  # a network round trip on Kafka: not every poll
            self.refresh_lag()
        return len(batch)

    def catch_up(self, max_s: float = 30.0) -> None:
        """Consume until nothing more is waiting (or max_s), so a round trains on all there is."""
        deadline = time.monotonic() + max_s
        while self.consume_once(timeout_s=0.5) and time.monotonic() < deadline:
            pass

    def due(self) -> bool:
        """Whether enough new trainable feedback has come in for a round."""
        new = self.store.new_since(self._last_round_seq)
        waited = time.time() - self._last_round_at
        return new >= self.cfg.min_new_comparisons or (new > 0 and waited >= self.cfg.max_interval_s)

    def waiting_for_canary(self) -> bool:
        """Whether this trainer's last proposal is still on the gateway's canary: the next round
        starts from what people decide (a round started now would train from the version the
        candidate is about to replace). Bounded by the canary's own time limit, so a gateway that
        never decides cannot stop training."""
        if self.settings.promotion.mode != "canary":
            return False
        candidate = self.registry.candidate()
        if candidate is None or self.registry.decision(candidate) is not None:
            return False
        return (
            time.time() - self.registry.info(candidate).created < self.settings.promotion.max_canary_s + 300
        )

    def run_round(self) -> dict:
        """Train, gate, publish and (if it passes) promote one candidate; returns the round's record."""
        started = time.time()
        last = self.store.last_round()
        number = (last["round"] + 1) if last else 1
        counts = self.store.counts()
        joined, seq = self.store.joined_count(), self.store.last_seq()
        ranked = self.store.ranked()
        rankings, judge_set = split_for_judging(ranked, self.cfg)
        prompts = self.store.prompts()
        if not rankings:
            log.info("round %d: no trainable rankings yet; waiting", number)
            self._last_round_at = time.time()
            return {"round": number, "decision": "skipped"}
        published = self._published(number)
        if published is not None:
            return self._finish_published_round(number, published, started, joined, seq)
        serving = self.registry.current()
        sft = self.registry.path(self.cfg.sft_version)
        round_dir = self.settings.paths.round_dir(number)
        log.info(
            "round %d: %d rankings (%d judge the reward model), %d prompts; serving %s",
            number,
            len(rankings),
            len(judge_set),
            len(prompts),
            serving,
        )
        rm_init = Path(last["rm_dir"]) if last and last["rm_dir"] and Path(last["rm_dir"]).exists() else sft
        init, adapter = self._policy_start(serving, sft)
        trained = train_candidate(
            RoundInputs(
                rankings,
                judge_set,
                prompts,
                sft=sft,
                serving=full_checkpoint(self.registry, serving, self.work / "merged"),
                rm_init=rm_init,
                policy_init=init,
                policy_adapter=adapter,
            ),
            round_dir,
            self.settings,
            self.runtime,
            self.pretraining,
            self.gate_pretraining,
        )
        rm_metrics, ppo_metrics, gate = trained.rm, trained.ppo, trained.gate
        # The gateways' labelling queues lease first the items this reward model is least sure of.
        if self.cfg.labelling_items_scored:
            self.registry.publish_uncertainty(
                labelling_uncertainty(
                    self.store,
                    round_dir / "rm",
                    sft,
                    self.runtime,
                    raters=self.settings.gateway.labelling.overlap,
                    limit=self.cfg.labelling_items_scored,
                )
            )
        # The new reward model's score of the serving version's answers less what the RM of the round
        # that made it gave the same version: a reward model whose scale drifts makes rewards and
        # gate margins incomparable between rounds, and a rising score on an unchanged policy is a
        # sign the RM is being learned around rather than with.
        scored_then = self.registry.info(serving).extra.get("gate", {}).get("candidate_reward")
        if scored_then is not None and "serving_reward" in gate.metrics:
            gate.metrics["rm_score_drift"] = gate.metrics["serving_reward"] - scored_then
        self.metrics.rm_accuracy.set(rm_metrics["heldout_accuracy"])
        # Passing the offline gate promotes at once (promotion.mode = direct) or proposes the
        # candidate to the gateway's canary, where people's comparisons decide (canary).
        decision = (
            ("promoted" if self.settings.promotion.mode == "direct" else "proposed")
            if gate.passed
            else "rejected"
        )
        # round + work_dir let a restarted trainer recognise a version it published before a crash.
        lineage = {
            "round": number,
            "work_dir": str(self.work),
            "rm": str(round_dir / "rm"),
            "rm_init": str(rm_init),
            "sft": self.cfg.sft_version,
            "policy_init": str(adapter or init or sft),
            "lora_adapter": str(round_dir / "policy" / ADAPTER_DIR) if self.runtime.lora.enabled else None,
            "merged": str(round_dir / "policy"),
            "data": {
                **counts,
                "rankings": len(rankings),
                "judge_rankings": len(judge_set),
                "prompts": len(prompts),
                "per_user": self.store.per_user(),
                "dead_letters": len(self.store.dead_letters()),
                "consumed": self.store.consumed(),
                # the feedback-to-deployment clock: the oldest comparison new to this round
                "first_new_comparison_at": self.store.first_at_since(self._last_round_seq),
            },
            "config": self.settings.train.model_dump(),
            "gate": {"decision": decision, "reasons": gate.reasons, **gate.metrics},
        }
        # An adapter is published on the full-weight version it was trained on: SFT, or the serving
        # version PPO started from.
        base = (
            self.cfg.sft_version
            if init is None
            else (None if self.registry.info(serving).is_adapter else serving)
        )
        as_adapter = self.runtime.lora.enabled and self.runtime.lora.publish == "adapter" and base is not None
        version = self.registry.publish(
            round_dir / "policy" / ADAPTER_DIR if as_adapter else round_dir / "policy",
            base=base if as_adapter else None,
            source="trainer",
            parent=serving,
            metrics={
                **{f"rm_{k}": v for k, v in rm_metrics.items()},
                **{f"ppo_{k}": v for k, v in ppo_metrics.items()},
                **gate.metrics,
            },
            extra=lineage,
        )
        return self._finish_published_round(number, version, started, joined, seq)

    def _policy_start(self, serving: str, sft: Path) -> tuple[Path | None, Path | None]:
        """Where PPO starts: (checkpoint, adapter). With LoRA, a serving version that this trainer made
        with LoRA goes on training its adapter on the SFT base (so the reference is that base with
        the adapter off); anything else starts from the serving checkpoint."""
        info = self.registry.info(serving)
        if self.runtime.lora.enabled and info.base == self.cfg.sft_version:
            return None, self.registry.path(serving)  # a published adapter on SFT: train it on
        if self.runtime.lora.enabled:
            adapter = info.extra.get("lora_adapter")
            if adapter and Path(adapter).is_dir() and info.extra.get("sft") == self.cfg.sft_version:
                return None, Path(adapter)
        path = full_checkpoint(self.registry, serving, self.work / "merged")
        return (None if path.resolve() == sft.resolve() else path), None

    def _published(self, number: int) -> str | None:
        """The version this trainer already published for round `number`, if a crash came after that."""
        for name in reversed(self.registry.names()):
            extra = self.registry.info(name).extra
            if extra.get("round") == number and extra.get("work_dir") == str(self.work):
                return name
        return None

    def _finish_published_round(
        self, number: int, version: str, started: float, joined: int, seq: int
    ) -> dict:
        # Every step here is idempotent, so a trainer restarted after a crash anywhere in it ends
        # the round exactly as an uninterrupted one would, instead of training and publishing it twice.
        info = self.registry.info(version)
        gate = info.extra["gate"]
        decision = gate["decision"]
        if info.created < started:
            log.info("round %d: %s was published before a restart; finishing the round", number, version)
        if decision == "promoted":
            if self.registry.current() != version:
                self.registry.set_current(version)
            failpoint("trainer.round.promoted")
            self.metrics.promoted.clear()
            self.metrics.promoted.labels(version).set(1)
        elif (
            decision == "proposed"
            and self.registry.decision(version) is None
            and self.registry.candidate() != version
        ):
            self.registry.propose(version)  # the gateway's canary takes it from here
            log.info("round %d: %s passed the gate; proposed to the gateway's canary", number, version)
        metrics = {k: gate[k] for k in gate if k not in ("decision", "reasons")}
        for policy in ("candidate", "serving"):
            self.metrics.reward.labels(policy).set(metrics.get(f"{policy}_reward", float("nan")))
        self.metrics.kl.set(metrics.get("kl_from_sft", float("nan")))
        self.metrics.ptx.set(metrics.get("candidate_ptx_loss", float("nan")))
        self.metrics.version_kl.labels(version).set(metrics.get("kl_from_sft", float("nan")))
        self.metrics.version_answer_tokens.labels(version).set(
            metrics.get("candidate_answer_tokens", float("nan"))
        )
        self.metrics.rm_drift.set(metrics.get("rm_score_drift", float("nan")))
        self.metrics.rounds.labels(decision).inc()
        self.metrics.round_seconds.observe(time.time() - started)
        record = {
            "round": number,
            "version": version,
            "decision": decision,
            "reasons": gate["reasons"],
            **metrics,
            "rm_heldout_accuracy": info.metrics.get("rm_heldout_accuracy"),
            "seconds": time.time() - started,
        }
        self.store.record_round(number, started, joined, version, info.extra["rm"], decision, record, seq)
        self._last_round_at, self._last_round_seq = time.time(), seq
        log.info(
            "round %d: %s %s (reward %.3f vs serving %.3f, KL %.2f, ptx %.3f; %.0fs)%s",
            number,
            decision,
            version,
            metrics.get("candidate_reward", float("nan")),
            metrics.get("serving_reward", float("nan")),
            metrics.get("kl_from_sft", float("nan")),
            metrics.get("candidate_ptx_loss", float("nan")),
            time.time() - started,
            "" if decision != "rejected" else f": {'; '.join(gate['reasons'])}",
        )
        self._refresh_gauges()
        return record

    def run_forever(self, stop=None) -> None:
        """Consume and train until stop() returns True."""
        if self.cfg.metrics_port:
            start_http_server(
                self.cfg.metrics_port, addr=self.cfg.metrics_host, registry=self.metrics_registry
            )
        log.info(
            "trainer: consuming as group %s; a round every %d new comparisons or %.0fs",
            self.cfg.group,
            self.cfg.min_new_comparisons,
            self.cfg.max_interval_s,
        )
        told = None  # the candidate whose canary we said we wait for
        while not (stop and stop()):
            self.consume_once(self.cfg.poll_s)
            if not self.due():
                continue
            if self.waiting_for_canary():
                if self.registry.candidate() != told:
                    told = self.registry.candidate()
                    log.info(
                        "trainer: %s is on the gateway's canary; the next round starts once people decide",
                        told,
                    )
                continue
            self.catch_up()
            self.run_round()

    def close(self) -> None:
        """Leave the consumer group."""
        self.source.close()
