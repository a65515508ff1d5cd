"""Promotion by people's evidence: the canary controller.

A version the trainer proposes (the registry's CANDIDATE pointer: it passed the offline gate) is
served as a sticky canary to `promotion.canary_fraction` of users by every gateway. People's
blinded comparisons between its answers and the serving version's (mixed requests that opt in,
labelling items), given on any gateway, reach every gateway's evidence store through the feedback
log (promotion/evidence_feed.py), one verdict per rater and request. One gateway, the holder of the
decider's lease (promotion/leader.py), runs the sequential test on them (promotion/sequential.py):
its decision promotes the candidate (its warm engine takes all traffic, CURRENT moves) or rolls it
back, and every other gateway follows the decision it writes to the registry. The test is a pure
function of the verdicts since the proposal, so a restarted gateway or a new leader resumes it
with every verdict. Guardrails (promotion/version_health.py) roll back a candidate whose engine
fails more requests or is much slower than the serving version's; any gateway may do that, since a
roll back can only lower the chance of a false promotion. Every decision goes into the registry
(decisions/<version>.json) with its evidence. An operator can still decide by hand (POST
/admin/policy with the candidate promotes it, DELETE /admin/canary rolls it back); that is recorded too.
"""

from __future__ import annotations

import asyncio
import logging
import time

from core.config import PromotionConfig
from core.supervision import supervise
from gateway.deployment import Deployment
from inference.engine import SwapBusy
from promotion.evidence import EvidenceStore
from promotion.leader import LeaderLease
from promotion.sequential import SequentialTest, SequentialTestConfig, run_test
from promotion.version_health import VersionHealth, guardrail_breach

log = logging.getLogger(__name__)


class CanaryController:
    """One candidate at a time through canary, test and decision."""

    def __init__(
        self, deployment: Deployment, evidence: EvidenceStore, health: VersionHealth, config: PromotionConfig
    ):
        self.deployment, self.evidence, self.health, self.config = deployment, evidence, health, config
        self.registry = deployment.registry
        self.metrics = deployment.metrics
        self.lease = LeaderLease(self.registry.root)
        self.leader = False
        self.test: SequentialTest | None = None
        self.candidate: str | None = None
        self.serving: str | None = None
        self._started = 0.0  # when the candidate was proposed: the same on every gateway
        self._serving_since = 0.0
        self._refused: set[str] = set()

    def state(self) -> dict:
        """What the controller is doing (GET /admin/promotion)."""
        if self.test is None:
            return {"mode": self.config.mode, "candidate": None, "decider": self.leader}
        return {
            "mode": self.config.mode,
            "candidate": self.candidate,
            "against": self.serving,
            "decider": self.leader,
            "fraction": self.config.canary_fraction,
            "running_s": time.time() - self._started,
            "max_canary_s": self.config.max_canary_s,
            **self.test.evidence(),
        }

    async def run(self) -> None:
        """Watch for candidates and decide them, forever (supervised: a failure is counted, and it goes on)."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.config.poll_s)
                await self.step()

        await supervise(
            "canary-controller", loop, lambda task: self.metrics.background_failures.labels(task).inc()
        )

    async def step(self) -> None:
        """One look: start a canary on a new candidate, or count the running one's verdicts and decide."""
        if not self.deployment.ready:
            return
        if self.test is None:
            await self._maybe_start()
            return
        canary = self.deployment.engine.canary
        if canary is None or canary.version != self.candidate:  # an operator decided by hand
            promoted = self.deployment.version == self.candidate
            self._finish(
                "promoted_by_operator" if promoted else "rolled_back_by_operator",
                f"an operator {'promoted' if promoted else 'stopped'} the canary",
            )
            return
        elsewhere = self.registry.decision(self.candidate)
        if elsewhere is not None:  # another gateway decided first: follow it
            log.info("promotion: %s was decided elsewhere (%s)", self.candidate, elsewhere.get("decision"))
            if elsewhere.get("decision") != "promoted":
                await self.deployment.stop_canary()
            self._reset()
            return
        if self.registry.candidate() != self.candidate:  # the trainer proposed a newer one
            await self.deployment.stop_canary()
            self._finish("superseded", f"the trainer proposed {self.registry.candidate()} instead")
            return
        verdicts = await asyncio.to_thread(
            self.evidence.verdicts, self.candidate, self.serving, self._started
        )
        self.test = run_test(verdicts, self.test.config)
        self.leader = await asyncio.to_thread(self.lease.hold)
        self._show()
        reason = guardrail_breach(
            self.health.summary(self.candidate), self.health.summary(self.serving), self.config
        )
        if reason and self.test.decision is None:
            self.test.stop("roll_back", reason)
        elif not self.leader:
            return  # the decider's test; this gateway follows what it writes
        elif self.test.decision is None and time.time() - self._started > self.config.max_canary_s:
            self.test.time_out(self.config.max_canary_s)
        # The decision's time is taken before the engines change: until then every user was still on
        # their version of the canary, and the change itself (a switch, a retired engine, the heap
        # settled again) can take seconds on a busy machine.
        decided_at = time.time()
        if self.test.decision == "promote":
            try:
                await self.deployment.switch(self.candidate)  # the warm canary engine takes all traffic
            except SwapBusy:
                return  # an admin switch holds the engines: decide again at the next look
            self._finish("promoted", self.test.reason, decided_at)
        elif self.test.decision == "roll_back":
            await self.deployment.stop_canary()
            self._finish("rolled_back", self.test.reason, decided_at)

    async def _maybe_start(self) -> None:
        candidate = self.registry.candidate()
        if candidate is None or candidate in self._refused:
            return
        if candidate == self.deployment.version or self.registry.decision(candidate) is not None:
            self.registry.clear_candidate(candidate)  # nothing left to decide
            return
        try:
            await self.deployment.start_canary(candidate, self.config.canary_fraction)
        except SwapBusy:
            return
        except Exception as exc:  # an engine that cannot start on it: a refusal, recorded
            self._refused.add(candidate)
            record = {
                "decision": "refused",
                "reason": f"{type(exc).__name__}: {exc}"[:500],
                "at": time.time(),
                "against": self.deployment.version,
            }
            if self.registry.record_decision(candidate, record):
                self.metrics.canary_decisions.labels("refused").inc()
            self.registry.clear_candidate(candidate)
            log.error("promotion: could not start a canary on %s (%s)", candidate, exc)
            return
        c = self.config
        self.test = SequentialTest(
            SequentialTestConfig(c.alpha, c.beta, c.delta, c.min_samples, c.max_samples, c.max_rater_share)
        )
        # Only verdicts given since the proposal count (the candidate served nobody before it).
        self.candidate, self.serving = candidate, self.deployment.version
        self._started = self.registry.candidate_since() or time.time()
        self._serving_since = time.time()  # when this gateway's canary engine took its users
        self._show()
        log.info(
            "promotion: canary %s serves %.0f%% of users (sticky) against %s until people's comparisons decide",
            candidate,
            100 * c.canary_fraction,
            self.serving,
        )

    def _show(self) -> None:
        t = self.test
        self.metrics.canary_llr.set(t.llr if t else 0.0)
        for outcome, n in (
            ("wins", t.wins if t else 0),
            ("losses", t.losses if t else 0),
            ("ties", t.ties if t else 0),
        ):
            self.metrics.canary_comparisons.labels(outcome).set(n)

    def _finish(self, decision: str, reason: str, decided_at: float | None = None) -> None:
        """Record the decision: `at` is when it was made, `applied_at` when the engines had followed it."""
        evidence = self.test.evidence()
        health = {v: vars(self.health.summary(v)) for v in (self.candidate, self.serving)}
        now = time.time()
        at = decided_at or now
        record = {
            "decision": decision,
            "reason": reason,
            "against": self.serving,
            "at": at,
            "applied_at": now,
            "started_at": self._started,
            "canary_started_at": self._serving_since,
            "canary_s": at - self._started,
            "fraction": self.config.canary_fraction,
            "evidence": evidence,
            "health": health,
        }
        if self.registry.record_decision(self.candidate, record):
            self.metrics.canary_decisions.labels(decision).inc()
        self.registry.clear_candidate(self.candidate)
        log.info(
            "promotion: %s %s against %s (%s; %d verdicts, %d won, LLR %.2f)",
            self.candidate,
            decision.replace("_", " "),
            self.serving,
            reason,
            evidence["n"],
            evidence["wins"],
            evidence["llr"],
        )
        self._reset()

    def _reset(self) -> None:
        self.test = self.candidate = self.serving = None
        self._show()
