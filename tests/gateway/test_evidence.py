"""People's verdicts between versions as the canary reads them (one per ranking, its share of the
cross-version pairs), kept once per event, and the per-version health behind the guardrails."""

from core.config import PromotionConfig
from gateway.evidence import EvidenceStore
from gateway.version_health import VersionHealth, guardrail_breach

VERSION = {"a1": "v0001", "a2": "v0001", "b1": "v0002", "b2": "v0002"}


def test_a_ranking_is_one_verdict_for_the_version_that_won_most_of_its_cross_version_pairs(tmp_path):
    store = EvidenceStore(tmp_path / "evidence.db")
    assert store.record("e1", "ann", [["b1"], ["a1"], ["b2"], ["a2"]], VERSION.get) == 4  # b wins 3 of 4
    assert store.record("e2", "bob", [["a1"], ["a2"], ["b1"], ["b2"]], VERSION.get) == 4  # a wins 4 of 4
    assert store.record("e3", "cy", [["a1"], ["b1"], ["b2"], ["a2"]], VERSION.get) == 4   # 2 of 4: even
    assert store.record("e4", "dee", [["a1"], ["a2"]], VERSION.get) == 0, "one version: says nothing about versions"
    assert store.record("e1", "ann", [["a1"], ["b1"]], VERSION.get) == 0, "the same event twice counts once"
    assert [won for _, won in store.verdicts("v0002", "v0001")] == [True, False, None]
    assert [won for _, won in store.verdicts("v0001", "v0002")] == [False, True, None]
    first_id = store.verdicts("v0002", "v0001")[0][0]
    assert len(store.verdicts("v0002", "v0001", after_id=first_id)) == 2 and store.last_id() > first_id
    assert len(store.outcomes()) == 12
    board = store.leaderboard(sft="v0001", serving="v0001", bootstrap_rounds=20)
    assert {r["version"] for r in board["versions"]} == {"v0001", "v0002"} and board["outcomes"] == 12
    assert EvidenceStore(tmp_path / "evidence.db").verdicts("v0002", "v0001")[0][1] is True, "durable"


def test_version_health_counts_failures_and_the_p99_of_successes():
    health = VersionHealth(window=100)
    for i in range(100):
        health.observe("v0002", ok=i % 10 != 0, seconds=1.0 if i < 98 else 9.0)
    summary = health.summary("v0002")
    assert summary.requests == 100 and summary.failures == 10 and abs(summary.error_rate - 0.1) < 1e-9
    assert summary.p99_s == 9.0
    assert health.summary("v0009").requests == 0 and health.summary("v0009").p99_s is None


def test_the_guardrails_roll_back_a_candidate_that_fails_more_or_is_much_slower_and_only_then():
    config = PromotionConfig(guardrail_min_requests=20, max_error_rate_increase=0.05, max_latency_ratio=3.0)
    health = VersionHealth()

    def serve(version: str, requests: int, failures: int, seconds: float) -> None:
        for i in range(requests):
            health.observe(version, ok=i >= failures, seconds=seconds)

    serve("serving", 100, failures=2, seconds=0.5)            # 2% failed, p99 0.5 s
    serve("like", 40, failures=2, seconds=1.4)                # 5%: within 2% + 5%; 2.8x: within 3x
    serve("failing", 40, failures=3, seconds=0.5)             # 7.5% > 7%
    serve("slow", 40, failures=0, seconds=1.6)                # 3.2x the serving p99
    serve("few", 19, failures=19, seconds=9.0)                # bad, but too few requests to judge
    decide = lambda v: guardrail_breach(health.summary(v), health.summary("serving"), config)  # noqa: E731
    assert decide("like") is None
    assert "failed 7.5% of its requests (serving 2.0%)" in decide("failing")
    assert "p99 latency 1.60s is over 3x the serving version's (0.50s)" in decide("slow")
    assert decide("few") is None
    serve("few", 1, failures=1, seconds=9.0)
    assert "failed 100.0%" in decide("few"), "judged from its 20th request"
