"""A leaderboard of policy versions from people's blinded comparisons, as Chatbot Arena keeps one.

Every ranking that puts answers of two versions side by side yields pairwise outcomes (the
version of the preferred answer beat the other; tied answers are half a win each). From them:

- Bradley–Terry scores: P(a beats b) = σ(s_a − s_b), fitted by maximum likelihood (a few hundred
  steps of gradient ascent on a handful of versions), centred on 0 (with a tiny ridge so that a
  version that never lost still has a finite score); 95% intervals by bootstrap over outcomes;
- win rates of each version against a reference (SFT, the serving version) with Wilson intervals.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from gateway.sequential import wilson


@dataclass(frozen=True)
class Outcome:
    """One pairwise result: `winner`'s answer was preferred to `loser`'s (tie: neither)."""

    winner: str
    loser: str
    tie: bool = False


def outcomes_of(ranking: list[list[str]], version_of) -> list[Outcome]:
    """The cross-version pairwise outcomes of one ranking (choice ids best first, inner lists tied);
    `version_of(choice_id)` names the version of each (None: not counted). Same-version pairs
    say nothing about versions and are skipped."""
    groups = [[v for v in map(version_of, group) if v] for group in ranking]
    out = []
    for i, better in enumerate(groups):
        for j, a in enumerate(better):
            out += [Outcome(a, b, tie=True) for b in better[j + 1:] if b != a]
        for worse in groups[i + 1:]:
            out += [Outcome(a, b) for a in better for b in worse if b != a]
    return out


def bradley_terry(outcomes: list[Outcome], steps: int = 300, lr: float = 0.5, ridge: float = 0.01) -> dict[str, float]:
    """Maximum-likelihood Bradley–Terry scores, centred on 0."""
    versions = sorted({v for o in outcomes for v in (o.winner, o.loser)})
    if not versions:
        return {}
    # The likelihood depends only on how often each outcome occurred: a step costs distinct
    # outcomes (a few per pair of versions), not comparisons.
    counts = Counter(outcomes)
    score = {v: 0.0 for v in versions}
    for _ in range(steps):
        grad = {v: -ridge * score[v] for v in versions}
        for o, n in counts.items():
            p = 1.0 / (1.0 + math.exp(score[o.loser] - score[o.winner]))  # P(winner beats loser)
            won = 0.5 if o.tie else 1.0
            grad[o.winner] += n * (won - p)
            grad[o.loser] -= n * (won - p)
        for v in versions:
            score[v] += lr * grad[v] / max(1, len(outcomes)) * len(versions)
        mean = sum(score.values()) / len(score)
        score = {v: s - mean for v, s in score.items()}
    return score


def bootstrap_intervals(outcomes: list[Outcome], rounds: int = 200, seed: int = 0) -> dict[str, tuple[float, float]]:
    """2.5th and 97.5th percentiles of each version's score over bootstrap resamples of outcomes."""
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        sample = rng.choices(outcomes, k=len(outcomes))
        for v, s in bradley_terry(sample, steps=150).items():
            draws.setdefault(v, []).append(s)
    out = {}
    for v, values in draws.items():
        values.sort()
        out[v] = (values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))])
    return out


def win_rate(outcomes: list[Outcome], version: str, against: str) -> dict:
    """How often `version`'s answer was preferred to `against`'s (ties half), with a 95% interval."""
    wins = n = 0.0
    for o in outcomes:
        if {o.winner, o.loser} != {version, against}:
            continue
        n += 1
        wins += 0.5 if o.tie else float(o.winner == version)
    return {"against": against, "comparisons": int(n), "rate": wins / n if n else None, "interval_95": wilson(wins, n)}


def leaderboard(outcomes: list[Outcome], sft: str | None, serving: str | None, bootstrap_rounds: int = 200) -> dict:
    """Every version's score with its interval and its win rates against SFT and the serving version."""
    scores = bradley_terry(outcomes)
    intervals = bootstrap_intervals(outcomes, bootstrap_rounds) if outcomes else {}
    rows = []
    for v in sorted(scores, key=scores.get, reverse=True):
        rows.append({"version": v, "score": scores[v], "interval_95": intervals.get(v),
                     "vs_sft": win_rate(outcomes, v, sft) if sft and v != sft else None,
                     "vs_serving": win_rate(outcomes, v, serving) if serving and v != serving else None})
    return {"versions": rows, "outcomes": len(outcomes), "sft": sft, "serving": serving}
