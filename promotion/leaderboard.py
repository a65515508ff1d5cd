"""A leaderboard of policy versions from people's blinded comparisons, as Chatbot Arena keeps one.

Every ranking that puts answers of two versions side by side yields pairwise outcomes (the
version of the preferred answer beat the other; tied answers are half a win each). From them:

- Bradley–Terry scores: P(a beats b) = σ(s_a − s_b), fitted by maximum likelihood (a few hundred
  steps of gradient ascent on a handful of versions), centred on 0 (with a tiny ridge so that a
  version that never lost still has a finite score);
- win rates of each version against a reference (SFT, the serving version).

Intervals (95%) come from a bootstrap over *rankings*, the people's judgements: the outcomes of one
ranking are correlated (one person, one prompt), so resampling outcomes would make them too narrow.
The state is bounded: how many rankings gave each pattern of outcomes (promotion/evidence.py keeps
those counts), so a fit costs the number of distinct patterns, not the number of rankings, and a
bootstrap round is one multinomial draw over them. `Board` fits at most once at a time and at most
every `min_interval_s`, so a flood of rankings and leaderboard calls costs one fit per interval.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from promotion.sequential import wilson


@dataclass(frozen=True)
class Outcome:
    """One pairwise result: `winner`'s answer was preferred to `loser`'s (tie: neither)."""

    winner: str
    loser: str
    tie: bool = False


def outcomes_of(ranking: list[list[str]], version_of: Callable[[str], str | None]) -> list[Outcome]:
    """The cross-version pairwise outcomes of one ranking (choice ids best first, inner lists tied);
    `version_of(choice_id)` names the version of each (None: not counted). Same-version pairs
    say nothing about versions and are skipped."""
    groups = [[v for v in map(version_of, group) if v] for group in ranking]
    out: list[Outcome] = []
    for i, better in enumerate(groups):
        for j, a in enumerate(better):
            out += [Outcome(a, b, tie=True) for b in better[j + 1 :] if b != a]
        for worse in groups[i + 1 :]:
            out += [Outcome(a, b) for a in better for b in worse if b != a]
    return out


# A pattern: one ranking's outcomes as [[a, b, a's wins, b's wins, ties], ...] (a < b), and how many
# rankings gave it.
Patterns = list[tuple[list[list[Any]], int]]


def outcome_counts(patterns: Patterns, weights: Sequence[int] | np.ndarray | None = None) -> Counter[Outcome]:
    """Outcome -> how often, over rankings of the given patterns (each counted `weights[i]` times)."""
    counts: Counter[Outcome] = Counter()
    for i, (pattern, n) in enumerate(patterns):
        n = n if weights is None else int(weights[i])
        if not n:
            continue
        for a, b, a_wins, b_wins, ties in pattern:
            counts[Outcome(a, b)] += n * a_wins
            counts[Outcome(b, a)] += n * b_wins
            counts[Outcome(a, b, tie=True)] += n * ties
    return +counts


def bradley_terry(
    counts: Counter[Outcome], steps: int = 300, lr: float = 0.5, ridge: float = 0.01
) -> dict[str, float]:
    """Maximum-likelihood Bradley–Terry scores from outcome counts, centred on 0."""
    versions = sorted({v for o in counts for v in (o.winner, o.loser)})
    if not versions:
        return {}
    total = sum(counts.values())
    score = dict.fromkeys(versions, 0.0)
    for _ in range(steps):
        grad = {v: -ridge * score[v] for v in versions}
        for o, n in counts.items():
            p = 1.0 / (1.0 + math.exp(score[o.loser] - score[o.winner]))  # P(winner beats loser)
            won = 0.5 if o.tie else 1.0
            grad[o.winner] += n * (won - p)
            grad[o.loser] -= n * (won - p)
        for v in versions:
            score[v] += lr * grad[v] / max(1, total) * len(versions)
        mean = sum(score.values()) / len(score)
        score = {v: s - mean for v, s in score.items()}
    return score


def win_rate(counts: Counter[Outcome], version: str, against: str) -> dict[str, Any]:
    """How often `version`'s answer was preferred to `against`'s (ties half); the interval here is
    Wilson's over outcomes (leaderboard() replaces it with the ranking bootstrap's)."""
    wins = n = 0.0
    for o, k in counts.items():
        if {o.winner, o.loser} != {version, against}:
            continue
        n += k
        wins += k * (0.5 if o.tie else float(o.winner == version))
    return {
        "against": against,
        "comparisons": int(n),
        "rate": wins / n if n else None,
        "interval_95": wilson(wins, n),
    }


def _percentiles(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    values = sorted(values)
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def leaderboard(
    patterns: Patterns, sft: str | None, serving: str | None, bootstrap_rounds: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Every version's score and win rates against SFT and the serving version, with intervals
    from resampled rankings."""
    counts = outcome_counts(patterns)
    scores = bradley_terry(counts)
    refs = {"sft": sft, "serving": serving}
    draws: dict[tuple[str, ...], list[float]] = {}
    rankings = sum(n for _, n in patterns)
    if rankings:
        rng = np.random.default_rng(seed)
        shares = np.array([n for _, n in patterns], dtype=float) / rankings
        for _ in range(bootstrap_rounds):
            sample = outcome_counts(patterns, rng.multinomial(rankings, shares))
            for v, s in bradley_terry(sample, steps=150).items():
                draws.setdefault(("score", v), []).append(s)
                for name, ref in refs.items():
                    if ref and v != ref and (r := win_rate(sample, v, ref)["rate"]) is not None:
                        draws.setdefault((name, v), []).append(r)
    rows = []
    for v in sorted(scores, key=lambda v: scores[v], reverse=True):
        row = {"version": v, "score": scores[v], "interval_95": _percentiles(draws.get(("score", v), []))}
        for name, ref in refs.items():
            rate = win_rate(counts, v, ref) if ref and v != ref else None
            if rate is not None and rate["rate"] is not None:
                rate["interval_95"] = _percentiles(draws.get((name, v), []))
            row[f"vs_{name}"] = rate
        rows.append(row)
    return {
        "versions": rows,
        "outcomes": sum(counts.values()),
        "rankings": rankings,
        "sft": sft,
        "serving": serving,
    }


class Board:
    """The leaderboard of a pattern source, fitted at most once at a time and at most every
    `min_interval_s`; callers meanwhile get the last fit."""

    def __init__(self, patterns: Callable[[], Patterns], min_interval_s: float = 5.0):
        self._patterns, self.min_interval_s = patterns, min_interval_s
        self._fitting = threading.Lock()
        self._version = 0  # bumped by changed()
        self._last: tuple[tuple[Any, ...], float, dict[str, Any]] | None = (
            None  # (what it was fitted from, when, board)
        )
        self.fits = 0

    def changed(self) -> None:
        """New rankings were kept."""
        self._version += 1

    def get(self, sft: str | None, serving: str | None, bootstrap_rounds: int = 200) -> dict[str, Any]:
        """The board (blocking: run it off the event loop)."""
        key = (self._version, sft, serving, bootstrap_rounds)
        last = self._last
        if last is not None and (
            last[0] == key or (last[0][1:] == key[1:] and time.monotonic() - last[1] < self.min_interval_s)
        ):
            return last[2]
        if not self._fitting.acquire(blocking=last is None):
            assert last is not None  # only a call with a board to show does not wait
            return last[2]  # a fit is running: the previous board until it ends
        try:
            if self._last is not None and self._last[0] == key:
                return self._last[2]
            board = leaderboard(self._patterns(), sft, serving, bootstrap_rounds)
            self.fits += 1
            self._last = (key, time.monotonic(), board)
            return board
        finally:
            self._fitting.release()
