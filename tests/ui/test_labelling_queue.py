"""The labelling queue through its API (the page's tests drive it in a browser): while a canary is
under evaluation an item mixes the serving and the canary version's answers, shuffled and with no
version shown to the rater, and the served-completion event in Kafka says which version wrote each;
the rater's ranking of it counts in the versions' leaderboard."""

from __future__ import annotations

import time
import uuid

from core.paths import StatePaths
from feedback.events import LABELLING_CALLER, CompletionServed
from gateway.ownership import Ownership
from promotion.leaderboard import Board
from tests.conftest import ADMIN_KEY, MODEL, RATER_KEY, USER_KEY
from tests.ui.test_ranking_page import events_of


def _serving(gateway) -> str:
    with gateway.client(ADMIN_KEY) as admin:
        return admin.get("/admin/versions").json()["serving"]


def _wait_filled(gateway, prompt: str, until=lambda item: True, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    with gateway.client(ADMIN_KEY) as admin:
        while True:
            items = [
                i
                for i in admin.get("/admin/labelling", params={"limit": 1000}).json()["items"]
                if i["prompt"] == prompt and i["filled"] and until(i)
            ]
            if items:
                return items[0]
            assert time.monotonic() < deadline, f"no filled item for {prompt!r}"
            time.sleep(0.5)


def _head_to_head(gateway, version: str) -> tuple[int, float]:
    """(outcomes, wins) of `version` against the serving version on the leaderboard."""
    with gateway.client(ADMIN_KEY) as admin:
        rows = {row["version"]: row for row in admin.get("/admin/leaderboard").json()["versions"]}
    rate = (rows.get(version) or {}).get("vs_serving") or {}
    return rate.get("comparisons", 0), (rate.get("rate") or 0.0) * rate.get("comparisons", 0)


def test_an_item_mixes_serving_and_canary_answers_blind_while_a_canary_runs(gateway, kafka_broker):
    serving = _serving(gateway)
    candidate = "v0002" if serving != "v0002" else "v0001"
    prompt = f"Describe a cat {uuid.uuid4().hex[:6]}."
    with gateway.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/canary", json={"version": candidate, "fraction": 0.01})
        assert r.status_code == 200, r.text
    try:
        with gateway.client(USER_KEY) as c:
            r = c.post(
                "/v1/chat/completions",
                json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": prompt}]},
            )
            assert r.status_code == 200, r.text
        item = _wait_filled(gateway, prompt)
    finally:
        with gateway.client(ADMIN_KEY) as admin:
            assert admin.delete("/admin/canary").status_code == 200
    served = next(
        e
        for e in events_of(
            gateway,
            kafka_broker.bootstrap,
            item["request_id"],
            lambda events: any(isinstance(e, CompletionServed) for e in events),
        )
        if isinstance(e, CompletionServed)
    )
    # k = 3 in this gateway's queue: 2 answers from the serving version, 1 from the canary.
    assert sorted(c.policy_version for c in served.choices) == sorted([serving, serving, candidate])
    assert served.policy_version == serving and served.caller == LABELLING_CALLER
    assert 0.0 <= item["disagreement"] <= 1.0  # how differently the two versions answered

    # The trainer's reward model's uncertainty, published through the registry, reaches the item.
    gateway.registry.publish_uncertainty({item["request_id"]: 0.625})
    assert _wait_filled(gateway, prompt, lambda i: i["uncertainty"] == 0.625)["uncertainty"] == 0.625

    # What the board said of the two versions before this rater's rankings (earlier tests' verdicts
    # on the same two versions are on it too).
    time.sleep(Board(list).min_interval_s + 0.5)  # past the board's last fit: the next call fits anew
    before = _head_to_head(gateway, candidate)
    # The rater sees the answers and their ids, never their versions. This rater likes the canary:
    # the test unseals the ids with the gateway's secret to rank as such a rater would.
    unseal = Ownership(
        [StatePaths(gateway.state_dir).ownership_secret.read_text().strip().encode()], 86400
    ).version_of
    canary_first = lambda ids: sorted(ids, key=lambda i: unseal(i) != candidate)  # noqa: E731
    with gateway.client(RATER_KEY) as rater:
        for _ in range(50):
            body = rater.get("/v1/labelling/next").json()
            if body["item"] is None or body["item"]["request_id"] == item["request_id"]:
                break
            first = [c["id"] for c in body["item"]["candidates"]]  # an older item: rank it, to reach ours
            assert (
                rater.post("/v1/feedback/rankings", json={"ranking": canary_first(first)}).status_code == 202
            )
        assert body["item"] and body["item"]["request_id"] == item["request_id"], body
    shown = body["item"]["candidates"]
    assert sorted(c["id"] for c in shown) == sorted(c.choice_id for c in served.choices)
    assert all(set(c) == {"id", "text"} for c in shown)

    # The rater prefers the canary's answer: one outcome against each serving answer, on the board.
    canary_ids = [c.choice_id for c in served.choices if c.policy_version == candidate]
    others = [c.choice_id for c in served.choices if c.policy_version != candidate]
    with gateway.client(RATER_KEY) as rater:
        r = rater.post("/v1/feedback/rankings", json={"ranking": canary_ids + others})
        assert r.status_code == 202, r.text
    # The verdicts reach the board through the feedback log; it is refitted at most every 5 s.
    deadline = time.monotonic() + 60
    while (after := _head_to_head(gateway, candidate))[0] < before[
        0
    ] + 2:  # ours: 1 canary answer x 2 serving
        assert time.monotonic() < deadline, (before, after)
        time.sleep(1)
    assert abs((after[1] - before[1]) - (after[0] - before[0])) < 1e-6, (
        "every new outcome is a canary win",
        before,
        after,
    )
    with gateway.client(ADMIN_KEY) as admin:
        metrics = admin.get("/metrics").text
    assert f'alignloop_version_score{{version="{candidate}"}}' in metrics
