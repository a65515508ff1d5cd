"""The canary's sequential test keeps its error rates although it is checked after every comparison
(checked here by simulating many canaries with a known true preference rate), and the leaderboard's
statistics recover a known ordering."""

import random

from gateway.leaderboard import Outcome, bradley_terry, leaderboard, outcomes_of, win_rate
from gateway.sequential import SequentialTest, SequentialTestConfig, wilson

RUNS = 2000


def simulate(true_rate: float, config: SequentialTestConfig, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    decisions = {"promote": 0, "roll_back": 0}
    for _ in range(RUNS):
        test = SequentialTest(config)
        while test.decision is None:
            test.add(None if rng.random() < 0.1 else rng.random() < true_rate)  # 10% ties
        decisions[test.decision] += 1
    return decisions


def test_false_promotions_stay_at_or_under_alpha():
    config = SequentialTestConfig(alpha=0.05, beta=0.1, delta=0.2, min_samples=20, max_samples=400)
    for true_rate, seed in ((config.p0, 1), (0.5 - 0.2, 2)):  # at the null, and worse than it
        promoted = simulate(true_rate, config, seed)["promote"] / RUNS
        # Binomial noise of 2000 runs at 0.05 is ~0.005; allow two of it.
        assert promoted <= config.alpha + 0.01, (true_rate, promoted)


def test_a_better_candidate_is_promoted_with_the_planned_power():
    config = SequentialTestConfig(alpha=0.05, beta=0.1, delta=0.2)
    promoted = simulate(config.p1, config, 3)["promote"] / RUNS
    assert promoted >= 1 - config.beta - 0.02, promoted
    assert simulate(0.85, config, 4)["promote"] / RUNS > 0.99


def test_bounds_and_limits():
    config = SequentialTestConfig(min_samples=10, max_samples=30)
    test = SequentialTest(config)
    for _ in range(9):
        assert test.add(True) is None, "no decision before min_samples"
    assert test.add(True) == "promote" and test.evidence()["n"] == 10
    undecided = SequentialTest(config)
    for i in range(30):
        undecided.add(i % 5 < 3)  # preferred 60% of the time: between the hypotheses, the statistic wanders
    assert undecided.decision == "roll_back" and "30 comparisons" in undecided.reason
    late = SequentialTest(config)
    late.add(True)
    assert late.time_out(600) == "roll_back" and "600" in late.reason


def test_bradley_terry_and_win_rates_recover_a_known_order():
    rng = random.Random(0)
    strength = {"v0001": 0.0, "v0002": 1.0, "v0003": 2.0}
    outcomes = []
    for _ in range(3000):
        a, b = rng.sample(list(strength), 2)
        p = 1 / (1 + 2.718281828 ** (strength[b] - strength[a]))
        outcomes.append(Outcome(a, b) if rng.random() < p else Outcome(b, a))
    scores = bradley_terry(outcomes)
    assert sorted(scores, key=scores.get) == ["v0001", "v0002", "v0003"]
    assert abs((scores["v0003"] - scores["v0001"]) - 2.0) < 0.3
    rate = win_rate(outcomes, "v0003", "v0001")
    lo, hi = rate["interval_95"]
    assert lo < rate["rate"] < hi and 0.8 < rate["rate"] < 0.95
    board = leaderboard(outcomes, sft="v0001", serving="v0002", bootstrap_rounds=30)
    assert [r["version"] for r in board["versions"]] == ["v0003", "v0002", "v0001"]
    top = board["versions"][0]
    assert top["interval_95"][0] < top["score"] < top["interval_95"][1] and top["vs_sft"]["rate"] > 0.8
    assert wilson(0, 0) is None and wilson(10, 10)[1] == 1.0


def test_a_ranking_yields_only_cross_version_outcomes():
    """Answers of one version compared with each other say nothing about versions; tied answers of
    two versions are a tie; ids whose version is unknown (not signed here) count for nothing."""
    version = {"a1": "v0001", "a2": "v0001", "b1": "v0002", "b2": "v0002"}
    ranking = [["b1"], ["a1", "b2"], ["a2"], ["forged"]]
    got = outcomes_of(ranking, version.get)
    assert sorted(got, key=repr) == sorted([
        Outcome("v0002", "v0001"),             # b1 over a1
        Outcome("v0002", "v0001"),             # b1 over a2
        Outcome("v0001", "v0002", tie=True),   # a1 tied with b2
        Outcome("v0002", "v0001"),             # b2 over a2
    ], key=repr)
    assert win_rate(got, "v0002", "v0001")["rate"] == 3.5 / 4
