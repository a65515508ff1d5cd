"""The canary's sequential test keeps its error rates although it is checked after every comparison
(checked here by simulating many canaries with a known true preference rate), and the leaderboard's
statistics recover a known ordering."""

import random
from collections import Counter

from promotion.leaderboard import Outcome, bradley_terry, leaderboard, outcome_counts, outcomes_of, win_rate
from promotion.sequential import SequentialTest, SequentialTestConfig, run_test, wilson

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
    rankings: Counter = Counter()  # one pairwise ranking per person: a pattern per outcome
    for _ in range(3000):
        a, b = sorted(rng.sample(list(strength), 2))
        p = 1 / (1 + 2.718281828 ** (strength[b] - strength[a]))
        rankings[(a, b, 1, 0, 0) if rng.random() < p else (a, b, 0, 1, 0)] += 1
    patterns = [([list(k)], n) for k, n in rankings.items()]
    counts = outcome_counts(patterns)
    scores = bradley_terry(counts)
    assert sorted(scores, key=scores.get) == ["v0001", "v0002", "v0003"]
    assert abs((scores["v0003"] - scores["v0001"]) - 2.0) < 0.3
    rate = win_rate(counts, "v0003", "v0001")
    lo, hi = rate["interval_95"]
    assert lo < rate["rate"] < hi and 0.8 < rate["rate"] < 0.95
    board = leaderboard(patterns, sft="v0001", serving="v0002", bootstrap_rounds=30)
    assert [r["version"] for r in board["versions"]] == ["v0003", "v0002", "v0001"]
    top = board["versions"][0]
    assert top["interval_95"][0] < top["score"] < top["interval_95"][1] and top["vs_sft"]["rate"] > 0.8
    assert top["vs_sft"]["interval_95"][0] < top["vs_sft"]["rate"] < top["vs_sft"]["interval_95"][1]
    assert wilson(0, 0) is None and wilson(10, 10)[1] == 1.0


def test_the_leaderboards_intervals_resample_people_not_outcomes():
    """100 people each ranked 9 answers (8 cross-version pairs each, all the same way within a
    person): the evidence is 100 judgements, not 800 independent outcomes, so the interval is as wide
    as 100 coin-like judgements give, about twice what resampling outcomes would claim."""
    rng = random.Random(1)
    rankings: Counter = Counter()
    for _ in range(100):
        rankings[("v0001", "v0002", 16, 0, 0) if rng.random() < 0.6 else ("v0001", "v0002", 0, 16, 0)] += 1
    patterns = [([list(k)], n) for k, n in rankings.items()]
    board = leaderboard(patterns, sft="v0001", serving=None, bootstrap_rounds=300)
    row = next(r for r in board["versions"] if r["version"] == "v0002")["vs_sft"]
    by_people = row["interval_95"][1] - row["interval_95"][0]
    by_outcomes = wilson(row["rate"] * row["comparisons"], row["comparisons"])
    assert by_people > 1.7 * (by_outcomes[1] - by_outcomes[0]), (row, by_outcomes)
    assert 0.15 < by_people < 0.25  # ~ 2 x 1.96 x sqrt(0.24 / 100)


def test_a_ranking_yields_only_cross_version_outcomes():
    """Answers of one version compared with each other say nothing about versions; tied answers of
    two versions are a tie; ids whose version is unknown (not signed here) count for nothing."""
    version = {"a1": "v0001", "a2": "v0001", "b1": "v0002", "b2": "v0002"}
    ranking = [["b1"], ["a1", "b2"], ["a2"], ["forged"]]
    got = outcomes_of(ranking, version.get)
    assert sorted(got, key=repr) == sorted(
        [
            Outcome("v0002", "v0001"),  # b1 over a1
            Outcome("v0002", "v0001"),  # b1 over a2
            Outcome("v0001", "v0002", tie=True),  # a1 tied with b2
            Outcome("v0002", "v0001"),  # b2 over a2
        ],
        key=repr,
    )
    assert win_rate(Counter(got), "v0002", "v0001")["rate"] == 3.5 / 4


def test_no_rater_supplies_more_than_their_share_of_a_decision():
    config = SequentialTestConfig(min_samples=20, max_rater_share=0.25)
    alone = run_test([("mallory", True)] * 400, config)
    assert alone.decision is None and alone.n == 5 and alone.evidence()["not_counted_over_share"] == 395
    # Four people can decide, each at most their share, although one of them is far more active.
    verdicts = [("mallory", True)] * 100 + [(f"p{i % 3}", True) for i in range(60)]
    test = run_test(verdicts, config)
    evidence = test.evidence()
    assert test.decision == "promote" and evidence["raters"] == 4, evidence
    assert evidence["largest_rater_share"] <= 0.25 + 1 / evidence["n"], evidence
    # The same verdicts give the same decision whoever computes it, and however often it is looked at.
    looks = [run_test(verdicts[:k], config).decision for k in range(1, len(verdicts) + 1)]
    first = next(d for d in looks if d is not None)
    assert first == test.decision and all(d == first for d in looks[looks.index(first) :])


def _false_promotions(replicas: int, seed: int, runs: int = RUNS) -> float:
    """Share of canaries of a candidate no better than serving (p = 0.5) that were promoted, when
    40 people's verdicts land on `replicas` gateways at random, each gateway's reach the log in
    batches at its own pace (every 1 to 20 verdicts' time: a slow broker link, a spool catching up),
    and the one decider looks at the pooled verdicts it has, in their order, every 1 to 10 ticks:
    verdicts it sees late are placed where they were given, as the evidence store orders them."""
    config = SequentialTestConfig(alpha=0.05, beta=0.1, delta=0.2, min_samples=20, max_samples=400)
    rng = random.Random(seed)
    promoted = 0
    for _ in range(runs):
        pace = [rng.randint(1, 20) for _ in range(replicas)]
        given = []  # (tick given, tick it reached the log, rater, verdict)
        for tick in range(800):
            r = rng.randrange(replicas)
            shipped = (tick // pace[r] + 1) * pace[r]
            given.append(
                (tick, shipped, f"p{rng.randrange(40)}", None if rng.random() < 0.1 else rng.random() < 0.5)
            )
        decision, now = None, 0
        while decision is None and now < 820:
            now += rng.randint(1, 10)
            seen = [(rater, won) for tick, shipped, rater, won in given if shipped <= now]
            decision = run_test(seen, config).decision
        promoted += decision == "promote"
    return promoted / runs


def test_false_promotions_stay_under_alpha_with_any_number_of_replicas():
    for replicas in (1, 2, 4):
        rate = _false_promotions(replicas, seed=replicas)
        assert rate <= 0.05 + 0.01, (replicas, rate)
