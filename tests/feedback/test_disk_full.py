"""Faults of the machine, with real parts: the disk under the spool fills while feedback flows, and
a gateway restarts on a CURRENT it cannot load."""

from __future__ import annotations

import random
import subprocess
import threading
import time

import httpx
import pytest

from feedback.events import parse_event
from feedback.topics import FEEDBACK
from tests.conftest import ADMIN_KEY, MODEL, USER_KEY, make_gateway
from tests.feedback.helpers import read_all_kafka
from tests.gateway.test_metrics import scrape


@pytest.fixture(scope="module")
def small_disk_gateway(tmp_path_factory, tiny_model_dir, kafka_broker):
    """A gateway whose spool directory is a 16 MB file system of its own (tmpfs, mounted by the test)."""
    root = tmp_path_factory.mktemp("disk")
    gw = make_gateway(root, tiny_model_dir, kafka_broker.bootstrap)
    spool = gw.state_dir / "feedback"
    spool.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(spool)], check=True)
    try:
        yield gw.start()
    finally:
        gw.stop()
        subprocess.run(["umount", str(spool)], check=False)


class Rater:
    """One client rating in a loop, each rating with its own idempotency key, retrying the same key
    through 503s until it is accepted; remembers what was accepted and every status seen."""

    def __init__(self, gw, choice_ids: list[str]):
        self.gw, self.choice_ids = gw, choice_ids
        self.accepted: dict[str, str] = {}
        self.statuses: list[int] = []
        self.retry_after: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(0)
        with self.gw.client() as c:
            i = 0
            while not self.stop.is_set():
                key = f"disk-{i}"
                body = {
                    "choice_id": rng.choice(self.choice_ids),
                    "rating": rng.choice([-1, 1]),
                    "idempotency_key": key,
                }
                while not self.stop.is_set():
                    r = c.post("/v1/feedback/ratings", json=body)
                    self.statuses.append(r.status_code)
                    if r.status_code in (200, 202):
                        self.accepted[key] = r.json()["event_id"]
                        break
                    assert r.status_code == 503, r.text
                    self.retry_after.add(r.headers.get("retry-after", ""))
                    time.sleep(0.2)
                i += 1


def test_a_full_disk_gets_503_serving_goes_on_and_nothing_accepted_is_lost(small_disk_gateway, kafka_broker):
    gw = small_disk_gateway
    with gw.client() as c:
        served = [
            c.post("/v1/completions", json={"model": MODEL, "prompt": "The", "n": 4, "max_tokens": 3}).json()
            for _ in range(10)
        ]
    rater = Rater(gw, [ch["id"] for r in served for ch in r["choices"]])
    rater.thread.start()
    filler = gw.state_dir / "feedback" / "filler"
    try:
        _wait(lambda: len(rater.accepted) >= 100, 120, "feedback before the disk fills")
        with open(filler, "wb") as f:  # fill the spool's file system to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        _wait(lambda: 503 in rater.statuses, 60, "feedback to be refused while the disk is full")
        with gw.client() as c:  # serving goes on while feedback cannot be stored
            for _ in range(3):
                assert (
                    c.post(
                        "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
                    ).status_code
                    == 200
                )
        accepted_while_full = len(rater.accepted)
        time.sleep(2)
    finally:
        filler.unlink(missing_ok=True)  # space comes back
    _wait(
        lambda: len(rater.accepted) >= accepted_while_full + 100,
        120,
        "feedback after the disk has room again",
    )
    rater.stop.set()
    rater.thread.join(60)
    assert rater.retry_after and "" not in rater.retry_after, "a 503 must say when to retry"
    _wait(
        lambda: scrape(gw).get(("alignloop_spool_events", ()), 1) == 0, 120, "the spool to empty into Kafka"
    )
    in_kafka = {
        parse_event(r.value).event_id for r in read_all_kafka(kafka_broker.bootstrap) if r.topic == FEEDBACK
    }
    missing = set(rater.accepted.values()) - in_kafka
    assert not missing, f"{len(missing)} accepted events never reached Kafka"


def test_a_gateway_restarted_on_an_unloadable_current_serves_the_last_good_version(small_disk_gateway):
    gw = small_disk_gateway
    serving = httpx.get(f"{gw.url}/readyz").json()["policy_version"]
    victim = gw.registry.publish(gw.registry.path(serving), source="test:unloadable")
    weights = gw.registry.path(victim) / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-1000])
    gw.stop()
    (gw.registry.root / "CURRENT").write_text(victim + "\n")
    gw.start()  # waits for /readyz: it must become ready
    assert httpx.get(f"{gw.url}/readyz").json()["policy_version"] == serving
    assert gw.registry.current() == serving, "CURRENT must name what is served"
    with gw.client(ADMIN_KEY) as admin:
        assert victim in admin.get("/admin/versions").json()["start_error"]
    with gw.client(USER_KEY) as c:
        assert (
            c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}).status_code
            == 200
        )


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
