"""People's verdicts between versions as the canary reads them: one per rater and request (its share
of the cross-version pairs), the latest ranking winning; the leaderboard's bounded fitting; and the
per-version engine health behind the guardrails."""

import threading
import time

from core.config import PromotionConfig
from feedback.events import Comparison
from promotion.evidence import EvidenceStore
from promotion.leader import LeaderLease
from promotion.leaderboard import Board
from promotion.version_health import VersionHealth, guardrail_breach

VERSION = {"a1": "v0001", "a2": "v0001", "b1": "v0002", "b2": "v0002"}


def _ranking(rater: str, request: str, ranking: list[list[str]], at: float, event_id: str = "") -> Comparison:
    return Comparison(
        request_id=request,
        rater=rater,
        ranking=ranking,
        timestamp=at,
        event_id=event_id or f"{rater}-{at}",
        choice_versions={c: VERSION[c] for group in ranking for c in group},
    )


def test_one_verdict_per_rater_and_request_the_latest_ranking_wins_and_keeps_its_place(tmp_path):
    store = EvidenceStore(tmp_path / "evidence.db")
    assert store.record(_ranking("ann", "r1", [["b1"], ["a1"], ["b2"], ["a2"]], 1.0))  # b wins 3 of 4
    assert store.record(_ranking("bob", "r2", [["a1"], ["a2"], ["b1"], ["b2"]], 2.0))  # a wins 4 of 4
    assert store.record(_ranking("cy", "r3", [["a1"], ["b1"], ["b2"], ["a2"]], 3.0))  # 2 of 4: even
    same_version = Comparison(request_id="r4", rater="dee", ranking=[["a1"], ["a2"]], timestamp=4.0)
    assert not store.record(same_version), "one version: says nothing about versions"
    assert [won for _, won in store.verdicts("v0002", "v0001")] == [True, False, None]
    assert [won for _, won in store.verdicts("v0001", "v0002")] == [False, True, None]
    assert [r for r, _ in store.verdicts("v0002", "v0001", since=2.0)] == ["bob", "cy"]

    # Replays of the same ranking (new event ids, as without idempotency keys) add nothing.
    for i in range(19):
        store.record(_ranking("ann", "r1", [["b1"], ["a1"], ["b2"], ["a2"]], 5.0 + i))
    assert len(store.verdicts("v0002", "v0001")) == 3
    # Ann changes her mind: her verdict is the latest ranking's, in its first place in the order.
    assert store.record(_ranking("ann", "r1", [["a1"], ["a2"], ["b1"], ["b2"]], 30.0))
    assert store.verdicts("v0002", "v0001")[0] == ("ann", False)
    assert not store.record(_ranking("ann", "r1", [["b1"], ["a1"], ["b2"], ["a2"]], 20.0)), (
        "an older one redelivered"
    )
    assert store.verdicts("v0002", "v0001")[0] == ("ann", False)
    # Another rater on the same request is another person's verdict.
    assert store.record(_ranking("eve", "r1", [["b1"], ["a1"]], 31.0))
    assert len(store.verdicts("v0002", "v0001")) == 4

    board = store.leaderboard(sft="v0001", serving="v0001", bootstrap_rounds=20)
    assert {r["version"] for r in board["versions"]} == {"v0001", "v0002"}
    assert board["rankings"] == 4 and board["outcomes"] == 4 + 4 + 4 + 1, "ann's replaced ranking counts once"
    reopened = EvidenceStore(tmp_path / "evidence.db")
    assert reopened.verdicts("v0002", "v0001") == store.verdicts("v0002", "v0001"), "durable"
    assert reopened.consumer_group() == store.consumer_group()
    assert EvidenceStore(tmp_path / "new.db").consumer_group() != store.consumer_group(), (
        "a new store rereads the log"
    )
    assert reopened.prune(older_than_s=0) == 4 and reopened.verdicts("v0002", "v0001") == []


def test_version_health_counts_failures_and_the_p99_of_successes():
    health = VersionHealth(window=100)
    for i in range(100):
        health.observe("v0002", ok=i % 10 != 0, prefill_s=0.01, step_s=0.002 if i < 60 else 9.0)
    summary = health.summary("v0002")
    assert summary.requests == 100 and summary.failures == 10 and abs(summary.error_rate - 0.1) < 1e-9
    assert summary.prefill_s == 0.01 and summary.step_s == 0.002, "medians: the slow 40% do not move them"
    assert health.summary("v0009").requests == 0 and health.summary("v0009").step_s is None


def test_the_guardrails_roll_back_a_candidate_whose_engine_fails_more_or_is_much_slower_and_only_then():
    config = PromotionConfig(guardrail_min_requests=20, max_error_rate_increase=0.05, max_latency_ratio=3.0)
    health = VersionHealth()

    def serve(version: str, requests: int, failures: int, step_s: float, prefill_s: float = 0.01) -> None:
        for i in range(requests):
            health.observe(version, ok=i >= failures, prefill_s=prefill_s, step_s=step_s)

    serve("serving", 100, failures=2, step_s=0.005)  # 2% failed, 5 ms a token
    serve("like", 40, failures=2, step_s=0.014)  # 5%: within 2% + 5%; 2.8x: within 3x
    serve("failing", 40, failures=3, step_s=0.005)  # 7.5% > 7%
    serve("slow", 40, failures=0, step_s=0.016)  # 3.2x the serving time per token
    serve("slow_prefill", 40, failures=0, step_s=0.005, prefill_s=0.04)
    serve("few", 19, failures=19, step_s=9.0)  # bad, but too few requests to judge
    decide = lambda v: guardrail_breach(health.summary(v), health.summary("serving"), config)  # noqa: E731
    assert decide("like") is None
    assert "failed 7.5% of its requests (serving 2.0%)" in decide("failing")
    assert "median time per token 16.0 ms is over 3x the serving version's (5.0 ms)" in decide("slow")
    assert "median prefill time 40.0 ms" in decide("slow_prefill")
    assert decide("few") is None
    serve("few", 1, failures=1, step_s=9.0)
    assert "failed 100.0%" in decide("few"), "judged from its 20th request"
    # Requests aimed at one version cannot move its median: 45 of 100 requests made 100x slower.
    serve("aimed", 55, failures=0, step_s=0.005)
    serve("aimed", 45, failures=0, step_s=0.5)
    assert decide("aimed") is None
    # And both versions need the minimum: a serving version with too few requests judges nothing.
    fresh = VersionHealth()
    for _ in range(100):
        fresh.observe("candidate", ok=False)
    fresh.observe("serving", ok=True, step_s=0.005)
    assert guardrail_breach(fresh.summary("candidate"), fresh.summary("serving"), config) is None


def test_the_leaderboard_is_fitted_once_at_a_time_and_at_most_every_interval():
    """Many callers during a flood cost one fit: callers that arrive while one runs wait for it (the
    first) or get the last board; new rankings are fitted again only after the interval."""
    fitted = []

    def patterns():
        fitted.append(1)
        time.sleep(0.3)
        return [([["v0001", "v0002", 3, 1, 0]], 10)]

    board = Board(patterns, min_interval_s=60)
    got = []
    callers = [threading.Thread(target=lambda: got.append(board.get("v0001", None, 10))) for _ in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(fitted) == 1 and len(got) == 8 and all(g is got[0] for g in got)
    board.changed()
    assert board.get("v0001", None, 10) is got[0] and len(fitted) == 1, "within the interval: the last board"
    board.min_interval_s = 0
    assert board.get("v0001", None, 10) is not got[0] and len(fitted) == 2


def test_one_decider_holds_the_lease_until_it_stops_renewing_or_lets_go(tmp_path):
    a, b = LeaderLease(tmp_path, ttl_s=0.5), LeaderLease(tmp_path, ttl_s=0.5)
    assert a.hold() and not b.hold() and a.hold(), "renewed by its holder, refused to another"
    time.sleep(0.6)  # a stops renewing (killed, hung)
    assert b.hold() and not a.hold()
    b.release()
    assert a.hold() and a.holder()["holder"] == a.me
