"""The sequential test that decides a canary: is the candidate preferred to the serving version?

People compare a candidate's answers with the serving version's (blinded). Each comparison that is
not a tie is one Bernoulli outcome x (1: the candidate's answer was preferred). Wald's sequential
probability ratio test weighs

    H0: p = 0.5  (no better than serving; roll back)   against   H1: p = 0.5 + δ  (better; promote)

by the log-likelihood ratio, updated after every comparison:

    LLR += x · log(p1 / p0) + (1 − x) · log((1 − p1) / (1 − p0))

and stops the first time LLR ≥ log((1 − β) / α) (promote) or LLR ≤ log(β / (1 − α)) (roll back).
Its error rates hold although it is looked at after every comparison: a candidate no better than
the serving version (p ≤ 0.5: a republished old version, a worse one) is promoted with probability
at most α; one preferred at p1 or more is rolled back with probability at most β. A
minimum sample delays any decision; a maximum sample or a time limit ends the test as a roll back
(never as a promotion), which only lowers the chance of a false promotion. tests/gateway/
test_sequential.py checks the error rates by simulation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SequentialTestConfig:
    """How sure the test must be, and how long it may take."""

    alpha: float = 0.05  # false promotion rate (candidate no better than p0)
    beta: float = 0.1  # false roll-back rate (candidate as good as p1)
    delta: float = 0.2  # the preference worth detecting: p1 = 0.5 + delta
    min_samples: int = 20
    max_samples: int = 400
    max_rater_share: float = 0.25  # of the verdicts counted (of min_samples while fewer are counted)

    def rater_limit(self, counted: int) -> int:
        """How many verdicts one rater may have among the first `counted` + 1 counted."""
        # Rounded up: with exactly 1 / max_rater_share raters, each must be able to go on.
        return max(1, math.ceil(self.max_rater_share * max(self.min_samples, counted + 1)))

    @property
    def p0(self) -> float:
        return 0.5

    @property
    def p1(self) -> float:
        return 0.5 + self.delta


@dataclass
class SequentialTest:
    """The test's state after the comparisons seen so far."""

    config: SequentialTestConfig = field(default_factory=SequentialTestConfig)
    wins: int = 0  # comparisons the candidate won
    losses: int = 0  # comparisons the serving version won
    ties: int = 0
    llr: float = 0.0
    decision: str | None = None  # "promote", "roll_back", or None while undecided
    reason: str = ""
    per_rater: dict[str, int] = field(default_factory=dict)  # verdicts counted per rater (ties too)
    over_share: int = 0  # verdicts not counted: their rater had supplied max_rater_share already

    @property
    def n(self) -> int:
        """Comparisons that count (ties do not)."""
        return self.wins + self.losses

    def add(self, candidate_won: bool | None) -> str | None:
        """Count one comparison (None: a tie); returns the decision once there is one."""
        if self.decision is not None:
            return self.decision
        if candidate_won is None:
            self.ties += 1
            return None
        c = self.config
        if candidate_won:
            self.wins += 1
            self.llr += math.log(c.p1 / c.p0)
        else:
            self.losses += 1
            self.llr += math.log((1 - c.p1) / (1 - c.p0))
        if self.n < c.min_samples:
            return None
        if self.llr >= math.log((1 - c.beta) / c.alpha):
            self._decide(
                "promote", f"the candidate is preferred (LLR {self.llr:.2f} crossed the promotion bound)"
            )
        elif self.llr <= math.log(c.beta / (1 - c.alpha)):
            self._decide(
                "roll_back",
                f"the candidate is not preferred (LLR {self.llr:.2f} crossed the roll-back bound)",
            )
        elif self.n >= c.max_samples:
            self._decide("roll_back", f"no decision within {c.max_samples} comparisons")
        return self.decision

    def time_out(self, seconds: float) -> str:
        """End an undecided test (time limit): a roll back."""
        if self.decision is None:
            return self._decide("roll_back", f"no decision within {seconds:g} s")
        return self.decision

    def stop(self, decision: str, reason: str) -> str:
        """End an undecided test for a reason outside it (a guardrail)."""
        if self.decision is None:
            return self._decide(decision, reason)
        return self.decision

    def _decide(self, decision: str, reason: str) -> str:
        self.decision, self.reason = decision, reason
        return decision

    def add_from(self, rater: str, candidate_won: bool | None) -> str | None:
        """Count one rater's verdict unless that rater has their share already."""
        if self.decision is not None:
            return self.decision
        counted = sum(self.per_rater.values())
        if self.per_rater.get(rater, 0) >= self.config.rater_limit(counted):
            self.over_share += 1
            return None
        self.per_rater[rater] = self.per_rater.get(rater, 0) + 1
        return self.add(candidate_won)

    def evidence(self) -> dict[str, Any]:
        """What the decision rests on, for the lineage."""
        c = self.config
        counted = sum(self.per_rater.values())
        return {
            "raters": len(self.per_rater),
            "largest_rater_share": max(self.per_rater.values()) / counted if counted else None,
            "not_counted_over_share": self.over_share,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "n": self.n,
            "rate": self.wins / self.n if self.n else None,
            "interval_95": wilson(self.wins, self.n),
            "llr": self.llr,
            "promote_bound": math.log((1 - c.beta) / c.alpha),
            "roll_back_bound": math.log(c.beta / (1 - c.alpha)),
            "decision": self.decision,
            "reason": self.reason,
            "config": asdict(c),
        }


def run_test(verdicts: Iterable[tuple[str, bool | None]], config: SequentialTestConfig) -> SequentialTest:
    """The test over (rater, candidate won / lost / None for a tie) verdicts in their order,
    stopped at the first decision."""
    test = SequentialTest(config)
    for rater, candidate_won in verdicts:
        if test.add_from(rater, candidate_won) is not None:
            break
    return test


def wilson(successes: float, n: float, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion (None without data)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
