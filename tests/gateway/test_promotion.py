"""Promotion by people's evidence, end to end with real parts (Kafka, the gateway with vLLM engines,
simulated users over HTTP): a proposed candidate runs as a sticky canary, users who opt in rank
blinded mixed answers of both versions by their hidden taste, and the sequential test promotes a
candidate they prefer and rolls back one they do not, with no failed request; both decisions are
in the registry with their evidence. Then a hostile key plays every attack on a running canary
(replays, unleased rankings, ids read for versions, requests aimed at one version, a leaderboard
flood, an idempotency-key flood) and none of them moves the test or the gateway."""

import random
import threading
import time

import httpx
import pytest

from core.config import SFTConfig
from core.paths import StatePaths
from gateway.ownership import Ownership
from promotion.leaderboard import Board
from synthetic.corpus import ANIMALS, PLACES
from synthetic.users import Population
from tests.conftest import ADMIN_KEY, MODEL, PEOPLE_KEYS, RATER_KEY, make_gateway, perturbed_copy
from tests.gateway.helpers import canary_running, decided
from trainer.sft import train_sft

PROMPTS = [f"Describe a {a}." for a in ANIMALS]
PROMOTION = """
[promotion]
canary_fraction = 0.5
min_samples = 20
max_samples = 200
max_canary_s = 900
poll_s = 0.5
guardrail_min_requests = 20
"""
KEYS_PER_CALLER = 200  # feedback.max_idempotency_keys_per_caller of this module's gateway
BOARD_INTERVAL_S = Board(list).min_interval_s  # the gateway refits the leaderboard at most this often


def _colour_policy(base, out, colour: str):
    """The base model fine-tuned to describe every animal as `colour` (the users' rule loves blue
    and does not care for red)."""
    rng = random.Random(colour)
    demos = [(p, f"The {p[11:-1]} is {colour} and it lives near {rng.choice(PLACES)}.") for p in PROMPTS * 48]
    return train_sft(base, demos, out, SFTConfig(batch_size=16, learning_rate=1e-3, save_every=0))


@pytest.fixture(scope="module")
def canary_gateway(tmp_path_factory, tiny_model_dir, kafka_broker):
    """A gateway of its own (its canaries must not move the shared gateway's traffic) on the session's broker."""
    gw = make_gateway(
        tmp_path_factory.mktemp("promotion"),
        tiny_model_dir,
        kafka_broker.bootstrap,
        extra=PROMOTION,
        feedback=f"max_idempotency_keys_per_caller = {KEYS_PER_CALLER}\n",
    ).start()
    yield gw
    gw.stop()


def test_people_promote_a_better_candidate_and_roll_back_a_worse_one(
    canary_gateway, tiny_model_dir, tmp_path
):
    gw = canary_gateway
    blue = _colour_policy(tiny_model_dir, tmp_path / "blue", "blue")
    red = _colour_policy(tiny_model_dir, tmp_path / "red", "red")
    users = Population(
        gw.url, PEOPLE_KEYS, PROMPTS, users=4, k=4, max_tokens=16, pause_s=0.2, compare_every=2
    ).start()
    try:
        serving = gw.registry.current()
        better = gw.registry.publish(
            blue, source="test:blue", parent=serving, extra={"data": {"first_new_comparison_at": time.time()}}
        )
        gw.registry.propose(better)
        promoted = decided(gw, better)
        worse = gw.registry.publish(red, source="test:red", parent=better)
        gw.registry.propose(worse)
        rolled_back = decided(gw, worse)
    finally:
        tally = users.stop()

    assert tally.failed == 0, tally.errors[:3]
    assert promoted["decision"] == "promoted", promoted
    evidence = promoted["evidence"]
    assert evidence["n"] >= 20 and evidence["rate"] > 0.5 and evidence["llr"] >= evidence["promote_bound"]
    assert evidence["interval_95"][0] > 0.5, "promoted on a preference distinguishable from no change"
    assert promoted["against"] == serving and gw.registry.current() == better
    # The guardrails' figures come from the engines: both versions' health has them.
    for version in (better, serving):
        health = promoted["health"][version]
        assert health["requests"] > 0 and health["prefill_s"] > 0 and health["step_s"] > 0, promoted["health"]
    assert rolled_back["decision"] == "rolled_back", rolled_back
    assert rolled_back["evidence"]["rate"] < 0.5 and rolled_back["against"] == better
    assert gw.registry.candidate() is None

    # Sticky: during each canary, every user's single-version answers came from one version (per
    # request, two versions would show up for most of the 4 users within a few requests each).
    for decision in (promoted, rolled_back):
        seen = tally.versions_seen(decision["canary_started_at"] + 1, decision["at"] - 1)
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


def test_an_operator_can_stop_or_promote_a_canary_by_hand_and_that_is_recorded(
    canary_gateway, tiny_model_dir
):
    gw = canary_gateway
    serving = gw.registry.current()
    stopped = gw.registry.publish(tiny_model_dir, source="test:by-hand-stop", parent=serving)
    gw.registry.propose(stopped)
    canary_running(gw, stopped)
    with gw.client(ADMIN_KEY) as admin:
        r = admin.delete("/admin/canary")
        assert r.status_code == 200 and r.json()["stopped"] == stopped, r.text
    decision = decided(gw, stopped, timeout_s=60)
    assert decision["decision"] == "rolled_back_by_operator" and decision["against"] == serving, decision
    assert gw.registry.current() == serving and gw.registry.candidate() is None

    promoted = gw.registry.publish(tiny_model_dir, source="test:by-hand-promote", parent=serving)
    gw.registry.propose(promoted)
    canary_running(gw, promoted)
    with gw.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/policy", json={"version": promoted})
        assert r.status_code == 200 and r.json()["serving"] == promoted, r.text
        decision = decided(gw, promoted, timeout_s=60)
        assert decision["decision"] == "promoted_by_operator" and decision["against"] == serving, decision
        assert gw.registry.current() == promoted and gw.registry.candidate() is None
        assert admin.get("/admin/promotion").json()["candidate"] is None
    with gw.client() as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "The", "max_tokens": 4})
    assert r.status_code == 200 and r.headers["x-policy-version"] == promoted
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'alignloop_canary_decisions_total{decision="rolled_back_by_operator"} 1.0' in metrics
    assert 'alignloop_canary_decisions_total{decision="promoted_by_operator"} 1.0' in metrics


def _evidence_read_back(gw, at_least: int, timeout_s: float = 120) -> None:
    """Wait until the gateway has read `at_least` cross-version rankings back from the log."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(f"{gw.url}/metrics").text
        line = next(
            (ln for ln in text.splitlines() if ln.startswith("alignloop_evidence_rankings_total ")), "x 0"
        )
        if float(line.split()[1]) >= at_least:
            return
        assert time.monotonic() < deadline, line
        time.sleep(0.5)


def _metric(gw, name: str) -> float:
    line = next(ln for ln in httpx.get(f"{gw.url}/metrics").text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


class _HealthProbe:
    """/healthz every 0.1 s on a thread; the slowest answer."""

    def __init__(self, url: str):
        self.url, self.slowest, self._stop = url, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.wait(0.1):
                started = time.monotonic()
                assert http.get(f"{self.url}/healthz").status_code == 200
                self.slowest = max(self.slowest, time.monotonic() - started)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.slowest


def _routed(gw, key: str, version: str) -> str:
    """A `user` value whose requests the sticky canary routing sends to `version` (as an attacker finds one)."""
    with gw.client(key) as c:
        for i in range(200):
            r = c.post(
                "/v1/completions", json={"model": MODEL, "prompt": "The", "max_tokens": 1, "user": f"u{i}"}
            )
            if r.headers["x-policy-version"] == version:
                return f"u{i}"
    raise AssertionError(f"no user value routed to {version}")


def test_a_hostile_key_cannot_steer_a_running_canary(canary_gateway, tiny_model_dir, tmp_path):
    gw = canary_gateway
    serving = gw.registry.current()
    candidate = gw.registry.publish(
        perturbed_copy(tiny_model_dir, tmp_path / "c", seed=7), source="test:attacked", parent=serving
    )
    gw.registry.propose(candidate)
    canary_running(gw, candidate)
    secret = StatePaths(gw.state_dir).ownership_secret.read_text().strip().encode()
    unseal = Ownership(
        [secret], 30 * 86400
    ).version_of  # the gateway's secret: the test, not the attacker, has it
    mallory = PEOPLE_KEYS[0]
    probe = _HealthProbe(gw.url)
    with gw.client(mallory) as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "n": 9,
                "max_tokens": 8,
                "compare_versions": True,
                "messages": [{"role": "user", "content": "Describe a fox."}],
            },
        )
        assert r.status_code == 200 and r.json()["policy_version"] == "mixed", r.text
        ids = [ch["id"] for ch in r.json()["choices"]]
        # The ids do not say which version wrote what; only the secret does.
        assert {unseal(i) for i in ids} == {candidate, serving}
        # Each sealed tag is different, even among one version's answers, and none holds a version's
        # name in clear. (Not "no digits of it in the hex": 24 random hex digits hold "0002" by chance.)
        tags = [bytes.fromhex(i.rsplit(".", 2)[1]) for i in ids]
        assert len(set(tags)) == len(tags)
        assert not any(v in i or v.encode() in t for i, t in zip(ids, tags) for v in (candidate, serving))
        best_first = sorted(ids, key=lambda i: unseal(i) != candidate)  # what an attacker would want to send

        # Replays: 19 in one batch, 5 single, 5 with idempotency keys. All accepted, one verdict.
        batch = c.post(
            "/v1/feedback/batch", json={"items": [{"kind": "ranking", "ranking": best_first}] * 19}
        )
        assert batch.status_code == 202, batch.text
        for i in range(5):
            assert c.post("/v1/feedback/rankings", json={"ranking": best_first}).status_code == 202
            assert (
                c.post(
                    "/v1/feedback/rankings", json={"ranking": best_first, "idempotency_key": f"replay-{i}"}
                ).status_code
                == 202
            )
    with gw.client(RATER_KEY) as rater:  # a rater ranking a request not leased to it
        r = rater.post("/v1/feedback/rankings", json={"ranking": best_first})
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_leased", r.text
    _evidence_read_back(gw, 29)
    time.sleep(2)  # a few of the controller's looks
    with gw.client(ADMIN_KEY) as admin:
        state = admin.get("/admin/promotion").json()
    assert state["candidate"] == candidate and state["decision"] is None, state
    assert state["wins"] + state["losses"] + state["ties"] == 1 and state["raters"] == 1, state

    # Requests aimed at the canary (a `user` value routed there), long and many-candidate, against
    # ordinary ones on the serving version: the guardrails judge the engines, not the requests.
    aimed, plain = _routed(gw, mallory, candidate), _routed(gw, PEOPLE_KEYS[1], serving)

    def send(key: str, user: str, body: dict) -> None:
        with gw.client(key) as c:
            for _ in range(8):
                r = c.post("/v1/completions", json={"model": MODEL, "prompt": "The", "user": user, **body})
                assert r.status_code == 200, r.text

    long = {"n": 9, "max_tokens": 200, "ignore_eos": True}
    threads = [threading.Thread(target=send, args=(mallory, aimed, long)) for _ in range(3)]
    threads += [
        threading.Thread(target=send, args=(PEOPLE_KEYS[1], plain, {"max_tokens": 8})) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2)
    with gw.client(ADMIN_KEY) as admin:
        state = admin.get("/admin/promotion").json()
    assert state["candidate"] == candidate and state["decision"] is None, state
    assert gw.registry.decision(candidate) is None

    # A flood of replayed rankings, then leaderboard calls: replays are one ranking on the board,
    # the board is fitted off the event loop at most once at a time, and /healthz keeps answering.
    def rankings_on_the_board() -> int:
        time.sleep(BOARD_INTERVAL_S + 0.5)  # past the last fit's interval: this call fits anew
        with gw.client(mallory) as c:
            return c.get("/v1/leaderboard").json()["rankings"]

    before = rankings_on_the_board()
    with gw.client(mallory) as c:
        for _ in range(20):  # in batches under this gateway's 64 KB body limit
            r = c.post(
                "/v1/feedback/batch", json={"items": [{"kind": "ranking", "ranking": best_first}] * 50}
            )
            assert r.status_code == 202, r.text
    _evidence_read_back(gw, 29 + 1000)
    boards = []

    def look() -> None:
        with gw.client(mallory) as c:
            for _ in range(5):
                boards.append(c.get("/v1/leaderboard").json())

    lookers = [threading.Thread(target=look) for _ in range(4)]
    for t in lookers:
        t.start()
    for t in lookers:
        t.join()
    assert len(boards) == 20 and all(b["rankings"] == before for b in boards), (before, boards[-1])
    assert rankings_on_the_board() == before, "1,000 replays of a kept ranking add none"

    # A flood of distinct idempotency keys from one key: its index rows stay within its own bound.
    with gw.client(mallory) as c:
        for n in range(10):
            items = [
                {"kind": "rating", "choice_id": ids[0], "rating": 1, "idempotency_key": f"flood-{n}-{i}"}
                for i in range(100)
            ]
            assert c.post("/v1/feedback/batch", json={"items": items}).status_code == 202
    index_bytes = _metric(gw, "alignloop_spool_index_bytes")
    assert index_bytes < (KEYS_PER_CALLER + 10) * 250, index_bytes  # 1,000 keys would be ~190 KB

    slowest = probe.stop()
    print(
        f"\nattacks: 1,030 replayed rankings -> 1 verdict; /healthz slowest {slowest * 1000:.0f} ms; "
        f"spool index {index_bytes / 1024:.1f} KB after 1,000 distinct keys"
    )
    assert slowest < 5.0, f"/healthz took {slowest:.1f} s during the attacks"
    with gw.client(ADMIN_KEY) as admin:
        state = admin.get("/admin/promotion").json()
        assert state["candidate"] == candidate and state["wins"] + state["losses"] + state["ties"] == 1, state
        assert admin.delete("/admin/canary").status_code == 200
    assert decided(gw, candidate, timeout_s=60)["decision"] == "rolled_back_by_operator"
