"""People's verdicts between versions as the canary reads them (one per ranking, its share of the
cross-version pairs), kept once per event, and the per-version health behind the guardrails."""

from gateway.evidence import EvidenceStore
from gateway.version_health import VersionHealth

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
