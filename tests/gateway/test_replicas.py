"""Two gateway replicas with no shared database: one registry (a shared folder), one Kafka, one
ownership secret, and a trainer process consuming. Feedback on what one served is accepted by the
other; what belongs to somebody else, or was made up, is refused by both; a retry sent to the other
replica is one event, stored once by the trainer; a promotion reaches both; a canary is decided
once, on both replicas' verdicts, through a kill of its decider."""

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
import uuid

import httpx
import pytest

from core.config import FeedbackConfig
from core.processes import free_port, stop_group
from feedback.events import Comparison
from feedback.source import open_source
from feedback.topics import FEEDBACK
from gateway.ownership import Ownership
from promotion.evidence import EvidenceStore
from promotion.sequential import SequentialTestConfig, run_test
from tests.conftest import (
    ADMIN_KEY,
    FEW_REQUESTS_KEY,
    MODEL,
    PEOPLE_KEYS,
    RATER_KEY,
    REPO,
    USER2_KEY,
    USER_KEY,
    make_gateway,
    perturbed_copy,
    write_pretraining_data,
)
from tests.gateway.helpers import canary_running, decided
from trainer.dataset_store import DatasetStore

CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Describe a cat."}],
    "max_tokens": 8,
    "n": 2,
    "temperature": 1.0,
}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, tiny_model_dir, kafka_broker):
    """Two `alignloop serve` processes sharing a registry, the broker and a secret; started together."""
    root = tmp_path_factory.mktemp("replicas")
    secret = secrets.token_hex(32)
    a = make_gateway(root / "a", tiny_model_dir, kafka_broker.bootstrap, secret=secret)
    b = make_gateway(root / "b", tiny_model_dir, kafka_broker.bootstrap, replica_of=a, secret=secret)
    try:
        for gw in (a, b):
            gw.launch()
        for gw in (a, b):
            gw.wait(ready=True)
        yield a, b
    finally:
        for gw in (a, b):
            gw.stop()


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory):
    """The compose stack's nginx.conf, unchanged but for addresses, in front of the two replicas."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(nginx), (
        "run `bash deploy/install-test-tools.sh` (make test does) for Debian's nginx"
    )
    a, b = replicas
    root, port = tmp_path_factory.mktemp("nginx"), free_port()
    conf = (REPO / "deploy" / "compose" / "nginx.conf").read_text()
    for name, gw in (("gateway-a:8000", a), ("gateway-b:8000", b)):
        assert f"server {name}" in conf
        conf = conf.replace(f"server {name}", f"server {gw.url.removeprefix('http://')}")
    assert "listen 8080;" in conf
    (root / "nginx.conf").write_text(conf.replace("listen 8080;", f"listen 127.0.0.1:{port};"))
    with open(root / "nginx.log", "wb") as log:
        proc = subprocess.Popen(
            [
                nginx,
                "-p",
                str(root),
                "-c",
                "nginx.conf",
                "-g",
                f"daemon off; pid {root}/nginx.pid; error_log stderr;",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/lb-health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "nginx.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        stop_group(proc)


def _through(url: str, key: str, source: str = "127.0.0.1") -> int:
    """The status of GET /v1/models sent to url from the loopback address `source`."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as c:
        return c.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_keys_limit_holds_once_behind_the_balancer(balancer):
    """The shipped balancer sends one key to one replica: 10 requests a minute is 10 in all, not
    10 per replica (round robin would let about 20 of these 24 through)."""
    statuses = [_through(balancer, FEW_REQUESTS_KEY) for _ in range(24)]
    assert set(statuses) == {200, 429}
    assert 10 <= statuses.count(200) <= 11  # the bucket refills a little while they are sent


def test_the_client_address_reaches_the_gateway_through_the_balancer(balancer):
    """Failed authentications are throttled per client behind the balancer: the one that guessed
    is refused (429), another client is still answered (401); a forged X-Forwarded-For is replaced."""
    guesser, other = "127.0.0.7", "127.0.0.8"
    statuses = []
    with httpx.Client(transport=httpx.HTTPTransport(local_address=guesser), timeout=30) as c:
        for i in range(40):  # 30 a minute per address (tests/conftest.py); one key, so one replica
            forged = {"X-Forwarded-For": f"10.9.{i}.1"}  # a new "address" each time: must not help
            headers = {"Authorization": "Bearer sk-guess", **forged}
            statuses.append(c.get(f"{balancer}/v1/models", headers=headers).status_code)
    assert statuses[0] == 401 and statuses[-1] == 429
    assert _through(balancer, "sk-guess", source=other) == 401


def _served(gw, key: str = USER_KEY) -> list[str]:
    with gw.client(key) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    return [ch["id"] for ch in r.json()["choices"]]


def _rank(gw, ids: list[str], key: str = USER_KEY, idempotency_key: str | None = None) -> httpx.Response:
    body = {"ranking": ids, **({"idempotency_key": idempotency_key} if idempotency_key else {})}
    with gw.client(key) as c:
        return c.post("/v1/feedback/rankings", json=body)


def _delivered(kafka: str, state_dir, request_ids: set[str], wanted: set[str], timeout: float = 60) -> list:
    """Every delivery (duplicates included) of feedback on these requests, read as the trainer reads."""
    source = open_source(FeedbackConfig(kafka_bootstrap=kafka), state_dir, f"test-{uuid.uuid4().hex}")
    out, deadline, complete_at = [], time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline:
            out += [
                d
                for d in source.poll(timeout_s=0.5)
                if d.event is not None and d.event.request_id in request_ids
            ]
            if complete_at is None and wanted <= {d.event.event_id for d in out}:
                complete_at = time.monotonic()
            if complete_at is not None and time.monotonic() > complete_at + 3:  # time for any duplicate
                break
    finally:
        source.close()
    return out


def _start_trainer(tmp_path, registry_root, kafka: str) -> tuple[subprocess.Popen, object]:
    """`alignloop trainer` on the replicas' registry and broker, in a consumer group of its own;
    it only consumes here (no round is due)."""
    state = tmp_path / "trainer-state"
    write_pretraining_data(state)
    sets = [
        f"state_dir={state}",
        f"registry_dir={registry_root}",
        f"feedback.kafka_bootstrap={kafka}",
        f"train.loop.group=test-replicas-{uuid.uuid4().hex[:8]}",
        "train.loop.metrics_port=0",
        "train.loop.min_new_comparisons=1000000000",
        "train.loop.max_interval_s=1000000000",
    ]
    with open(tmp_path / "trainer.log", "wb") as log:  # the child process keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "alignloop", "trainer", *(a for s in sets for a in ("--set", s))],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    return proc, state / "trainer" / "dataset.db"


def test_feedback_crosses_replicas_and_ownership_holds_on_both(replicas, kafka_broker, tmp_path):
    a, b = replicas
    trainer, dataset = _start_trainer(tmp_path, a.registry.root, kafka_broker.bootstrap)
    from_a, from_b = _served(a), _served(b)
    accepted = []

    # Served by one, ranked through the other: accepted.
    for gw, ids in ((b, from_a), (a, from_b)):
        r = _rank(gw, ids)
        assert r.status_code == 202, r.text
        accepted.append(r.json()["event_id"])

    # Another caller's ids: 403 on either replica; for a rater too, unless leased to it.
    for gw in (a, b):
        r = _rank(gw, from_a, key=USER2_KEY)
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_completion", r.text
    r = _rank(b, from_a, key=RATER_KEY)
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_leased", r.text

    # Made-up or altered ids: 404 on either replica, whoever asks.
    altered = from_a[0][:-1] + ("0" if from_a[0][-1] != "0" else "1")
    sealed_at = from_a[0].rindex(".") - 1  # the last digit of the sealed version
    other_version = (
        from_a[0][:sealed_at] + ("0" if from_a[0][sealed_at] != "0" else "1") + from_a[0][sealed_at + 1 :]
    )
    for gw in (a, b):
        for bad in (altered, other_version, "chatcmpl-made-up-0"):
            r = _rank(gw, [bad, from_a[1]], key=RATER_KEY)
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_choice", (bad, r.text)

    # A retry with the same idempotency key on the other replica is the same event.
    fresh = _served(a)
    first = _rank(a, fresh[::-1], idempotency_key="retry-1")
    again_elsewhere = _rank(b, fresh[::-1], idempotency_key="retry-1")
    again_here = _rank(a, fresh[::-1], idempotency_key="retry-1")
    assert first.status_code == 202 and again_elsewhere.status_code == 202, (first.text, again_elsewhere.text)
    assert again_here.status_code == 200 and again_here.json()["duplicate"] is True
    assert first.json()["event_id"] == again_elsewhere.json()["event_id"] == again_here.json()["event_id"]
    accepted.append(first.json()["event_id"])

    # Kafka has the retried event twice (each replica sent it); the trainer stores every accepted
    # comparison exactly once, joined to its completion.
    request_ids = {i.rsplit("-", 1)[0] for i in from_a + from_b + fresh}
    delivered = _delivered(kafka_broker.bootstrap, a.state_dir, request_ids, set(accepted))
    comparisons = [d.event.event_id for d in delivered if isinstance(d.event, Comparison)]
    assert comparisons.count(first.json()["event_id"]) == 2, "both replicas sent the retried event"
    try:
        deadline = time.monotonic() + 120
        while not (dataset.exists() and set(accepted) <= set(DatasetStore(dataset).comparison_ids())):
            assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "trainer.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)  # time for a second copy to arrive, if one could
        store = DatasetStore(dataset)
        mine = [e for e in store.comparison_ids() if e in set(accepted)]
        assert sorted(mine) == sorted(accepted)
        with sqlite3.connect(dataset) as db:  # the completions the rankings join to are there too
            stored = {r for (r,) in db.execute("SELECT request_id FROM completions")}
        assert request_ids <= stored
    finally:
        stop_group(trainer)


def test_a_promotion_reaches_every_replica(replicas):
    a, b = replicas
    registry = a.registry
    target = "v0002" if registry.current() != "v0002" else "v0001"
    registry.set_current(target)
    deadline = time.monotonic() + 300
    for gw in (a, b):
        while True:
            with gw.client() as c:
                r = c.post("/v1/chat/completions", json={**CHAT, "n": 1})
            assert r.status_code == 200, r.text  # no request fails while the replicas switch
            if r.headers["x-policy-version"] == target:
                break
            assert time.monotonic() < deadline, f"{gw.url} still serves {r.headers['x-policy-version']}"
            time.sleep(0.5)


def test_one_decision_from_both_replicas_verdicts_and_a_killed_decider_resumes_with_all(
    replicas, tiny_model_dir, kafka_broker, tmp_path
):
    """A candidate on canary on both replicas; people's verdicts land on either. Each replica reads
    all of them back from Kafka, one (the lease holder) decides; killed mid-canary, the other takes
    over with every verdict (those given on the killed one too). The decision is the one a single
    store given every verdict computes. (Last in this module: the killed replica stays down.)"""
    a, b = replicas
    registry = a.registry
    serving = registry.current()
    candidate = registry.publish(
        perturbed_copy(tiny_model_dir, tmp_path / "candidate", seed=11), source="test:pooled", parent=serving
    )
    registry.propose(candidate)
    for gw in (a, b):
        canary_running(gw, candidate)
    secret = tomllib.loads(a.config.read_text())["gateway"]["ownership_secrets"][0]
    unseal = Ownership([secret.encode()], 86400).version_of

    def verdict(gw, key: str) -> None:
        """One person's blinded mixed request, ranked candidate first."""
        with gw.client(key) as c:
            r = c.post("/v1/chat/completions", json={**CHAT, "compare_versions": True})
            assert r.status_code == 200 and r.json()["policy_version"] == "mixed", r.text
            ids = sorted((ch["id"] for ch in r.json()["choices"]), key=lambda i: unseal(i) != candidate)
            assert c.post("/v1/feedback/rankings", json={"ranking": ids}).status_code == 202

    def state(gw, counted: int | None = None, decider: bool | None = None, timeout_s: float = 120) -> dict:
        deadline = time.monotonic() + timeout_s
        with gw.client(ADMIN_KEY) as admin:
            while True:
                s = admin.get("/admin/promotion").json()
                if (
                    s.get("candidate") == candidate
                    and (counted is None or s["n"] + s["ties"] == counted)
                    and (decider is None or s["decider"] == decider)
                ):
                    return s
                assert time.monotonic() < deadline, s
                time.sleep(0.5)

    for i in range(8):  # two per person, spread over both replicas
        verdict((a, b)[i % 2], PEOPLE_KEYS[i % 4])
    pooled = [state(gw, counted=8) for gw in (a, b)]  # each received 4 and counts all 8
    assert pooled[0]["llr"] == pooled[1]["llr"] and pooled[0]["decider"] != pooled[1]["decider"], pooled
    decider, other = (a, b) if pooled[0]["decider"] else (b, a)

    decider.stop(kill=True)
    assert state(other, counted=8, decider=True, timeout_s=60)["decision"] is None  # took over, every verdict

    for i in range(12):
        verdict(other, PEOPLE_KEYS[i % 4])
    decision = decided(other, candidate, timeout_s=300)
    evidence = decision["evidence"]
    assert decision["decision"] == "promoted" and evidence["n"] == 20 and evidence["raters"] == 4, decision

    # The same verdicts, read from Kafka into a fresh store, give the same test.
    store = EvidenceStore(tmp_path / "all.db")
    source = open_source(
        FeedbackConfig(kafka_bootstrap=kafka_broker.bootstrap),
        tmp_path,
        f"test-{uuid.uuid4().hex}",
        (FEEDBACK,),
    )
    deadline = time.monotonic() + 60
    try:
        while len(store.verdicts(candidate, serving, decision["started_at"])) < 20:
            assert time.monotonic() < deadline
            for d in source.poll(timeout_s=0.5):
                if isinstance(d.event, Comparison) and d.event.choice_versions:
                    store.record(d.event)
    finally:
        source.close()
    config = SequentialTestConfig(**evidence["config"])
    alone = run_test(store.verdicts(candidate, serving, decision["started_at"]), config).evidence()
    assert {k: alone[k] for k in ("wins", "losses", "ties", "llr", "decision")} == {
        k: evidence[k] for k in ("wins", "losses", "ties", "llr", "decision")
    }
    with other.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "n": 1}).headers["x-policy-version"] == candidate
