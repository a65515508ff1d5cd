"""Promotion by people's evidence, end to end with real parts (Kafka, the gateway with vLLM engines,
simulated users over HTTP): a proposed candidate runs as a sticky canary, users who opt in rank
blinded mixed answers of both versions by their hidden taste, and the sequential test promotes a
candidate they prefer and rolls back one they do not, with no failed request; both decisions are
in the registry with their evidence."""

import random
import time

import httpx
import pytest

from core.config import SFTConfig
from synthetic.corpus import ANIMALS, PLACES
from synthetic.users import Population
from tests.conftest import ADMIN_KEY, MODEL, USER_KEY, make_gateway
from trainer.sft import train_sft

PROMPTS = [f"Describe a {a}." for a in ANIMALS]
PROMOTION = """
[promotion]
canary_fraction = 0.5
min_samples = 20
max_samples = 200
max_canary_s = 900
poll_s = 0.5
"""


def _colour_policy(base, out, colour: str):
    """The base model fine-tuned to describe every animal as `colour` (the users' rule loves blue
    and does not care for red)."""
    rng = random.Random(colour)
    demos = [(p, f"The {p[11:-1]} is {colour} and it lives near {rng.choice(PLACES)}.") for p in PROMPTS * 48]
    return train_sft(base, demos, out, SFTConfig(batch_size=16, learning_rate=1e-3, save_every=0))


@pytest.fixture(scope="module")
def canary_gateway(tmp_path_factory, tiny_model_dir, kafka_broker):
    """A gateway of its own (its canaries must not move the shared gateway's traffic) on the session's broker."""
    gw = make_gateway(tmp_path_factory.mktemp("promotion"), tiny_model_dir, kafka_broker.bootstrap,
                      extra=PROMOTION).start()
    yield gw
    gw.stop()


def _decided(gw, version: str, timeout_s: float = 900) -> dict:
    deadline = time.monotonic() + timeout_s
    while (decision := gw.registry.decision(version)) is None:
        assert time.monotonic() < deadline, httpx.get(f"{gw.url}/admin/promotion",
                                                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        time.sleep(1)
    return decision


def test_people_promote_a_better_candidate_and_roll_back_a_worse_one(canary_gateway, tiny_model_dir, tmp_path):
    gw = canary_gateway
    blue = _colour_policy(tiny_model_dir, tmp_path / "blue", "blue")
    red = _colour_policy(tiny_model_dir, tmp_path / "red", "red")
    users = Population(gw.url, USER_KEY, PROMPTS, users=4, k=4, max_tokens=16, pause_s=0.2, compare_every=2).start()
    try:
        serving = gw.registry.current()
        better = gw.registry.publish(blue, source="test:blue", parent=serving,
                                     extra={"data": {"first_new_comparison_at": time.time()}})
        gw.registry.propose(better)
        promoted = _decided(gw, better)
        worse = gw.registry.publish(red, source="test:red", parent=better)
        gw.registry.propose(worse)
        rolled_back = _decided(gw, worse)
    finally:
        tally = users.stop()

    assert tally.failed == 0, tally.errors[:3]
    assert promoted["decision"] == "promoted", promoted
    evidence = promoted["evidence"]
    assert evidence["n"] >= 20 and evidence["rate"] > 0.5 and evidence["llr"] >= evidence["promote_bound"]
    assert evidence["interval_95"][0] > 0.5, "promoted on a preference distinguishable from no change"
    assert promoted["against"] == serving and gw.registry.current() == better
    assert rolled_back["decision"] == "rolled_back", rolled_back
    assert rolled_back["evidence"]["rate"] < 0.5 and rolled_back["against"] == better
    assert gw.registry.candidate() is None

    # Sticky: during each canary, every user's single-version answers came from one version (per
    # request, two versions would show up for most of the 4 users within a few requests each).
    for decision in (promoted, rolled_back):
        seen = tally.versions_seen(decision["started_at"] + 1, decision["at"] - 1)
        assert seen and all(len(v) == 1 for v in seen.values()), seen
    assert tally.mixed > 0

    with gw.client(ADMIN_KEY) as admin:
        state = admin.get("/admin/promotion").json()
        metrics = httpx.get(f"{gw.url}/metrics").text
        listing = admin.get("/admin/versions").json()
    assert [d["version"] for d in state["decisions"]][:2] == [worse, better] and state["candidate"] is None
    assert 'alignloop_canary_decisions_total{decision="promoted"} 1.0' in metrics
    assert 'alignloop_canary_decisions_total{decision="rolled_back"} 1.0' in metrics
    assert "alignloop_feedback_to_deployment_seconds_count 1.0" in metrics
    assert listing["serving"] == better and {e["role"] for e in listing["engines"]} <= {"serving", "retiring"}


def _canary_running(gw, version: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    with gw.client(ADMIN_KEY) as admin:
        while (state := admin.get("/admin/promotion").json())["candidate"] != version:
            assert time.monotonic() < deadline, state
            time.sleep(0.5)


def test_an_operator_can_stop_or_promote_a_canary_by_hand_and_that_is_recorded(canary_gateway, tiny_model_dir):
    gw = canary_gateway
    serving = gw.registry.current()
    stopped = gw.registry.publish(tiny_model_dir, source="test:by-hand-stop", parent=serving)
    gw.registry.propose(stopped)
    _canary_running(gw, stopped)
    with gw.client(ADMIN_KEY) as admin:
        r = admin.delete("/admin/canary")
        assert r.status_code == 200 and r.json()["stopped"] == stopped, r.text
    decision = _decided(gw, stopped, timeout_s=60)
    assert decision["decision"] == "rolled_back_by_operator" and decision["against"] == serving, decision
    assert gw.registry.current() == serving and gw.registry.candidate() is None

    promoted = gw.registry.publish(tiny_model_dir, source="test:by-hand-promote", parent=serving)
    gw.registry.propose(promoted)
    _canary_running(gw, promoted)
    with gw.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/policy", json={"version": promoted})
        assert r.status_code == 200 and r.json()["serving"] == promoted, r.text
        decision = _decided(gw, promoted, timeout_s=60)
        assert decision["decision"] == "promoted_by_operator" and decision["against"] == serving, decision
        assert gw.registry.current() == promoted and gw.registry.candidate() is None
        assert admin.get("/admin/promotion").json()["candidate"] is None
    with gw.client() as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "The", "max_tokens": 4})
    assert r.status_code == 200 and r.headers["x-policy-version"] == promoted
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'alignloop_canary_decisions_total{decision="rolled_back_by_operator"} 1.0' in metrics
    assert 'alignloop_canary_decisions_total{decision="promoted_by_operator"} 1.0' in metrics
