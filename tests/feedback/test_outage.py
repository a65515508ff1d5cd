"""Feedback survives a broker outage and a gateway crash: every accepted event reaches Kafka."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from feedback.events import parse_event
from feedback.topics import FEEDBACK
from tests.conftest import MODEL, USER_KEY, make_gateway
from tests.feedback.helpers import read_all_kafka
from tests.gateway.test_metrics import scrape

TOTAL = 10_000
BATCH = 50
SINGLES = 1_000  # the rest goes in batches of BATCH


@pytest.fixture(scope="module")
def outage_gateway(tmp_path_factory, tiny_model_dir, kafka_broker):
    """A gateway of its own, so that killing it disturbs no other test."""
    gw = make_gateway(tmp_path_factory.mktemp("outage"), tiny_model_dir, kafka_broker.bootstrap).start()
    yield gw
    gw.stop()


def _serve_choices(gw, n_requests: int) -> list[list[str]]:
    with gw.client() as c:
        out = []
        for _ in range(n_requests):
            r = c.post("/v1/completions", json={"model": MODEL, "prompt": "The", "n": 4, "max_tokens": 3})
            assert r.status_code == 200, r.text
            out.append([ch["id"] for ch in r.json()["choices"]])
        return out


def _items(requests: list[list[str]], tag: str) -> list[dict]:
    rng = random.Random(tag)
    items = []
    for i in range(TOTAL):
        ids = rng.choice(requests)
        kind = ("rating", "pairwise", "ranking")[i % 3]
        key = f"{tag}-{i}"
        if kind == "rating":
            items.append(
                {"kind": "rating", "choice_id": ids[0], "rating": rng.choice([-1, 1]), "idempotency_key": key}
            )
        elif kind == "pairwise":
            a, b = rng.sample(ids, 2)
            items.append({"kind": "pairwise", "chosen": a, "rejected": b, "idempotency_key": key})
        else:
            order = rng.sample(ids, 4)
            items.append(
                {"kind": "ranking", "ranking": [order[0], order[1:3], order[3]], "idempotency_key": key}
            )
    return items


class Submitter:
    """Clients that submit every item until it is accepted, retrying the same idempotency keys
    through connection errors and 503s; anything else is a refusal and is recorded as such."""

    def __init__(self, url: str, items: list[dict]):
        self.url, self.accepted, self.refused, self.retries = url, {}, [], 0
        singles = [("single", [it]) for it in items[:SINGLES]]
        batches = [("batch", items[i : i + BATCH]) for i in range(SINGLES, len(items), BATCH)]
        self.work = singles + batches
        random.Random(0).shuffle(self.work)
        self.lock = threading.Lock()

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def _send(self, http: httpx.Client, kind: str, chunk: list[dict]) -> None:
        while True:
            try:
                if kind == "single":
                    item = dict(chunk[0])
                    route = {"rating": "ratings", "pairwise": "pairwise", "ranking": "rankings"}[
                        item.pop("kind")
                    ]
                    r = http.post(f"/v1/feedback/{route}", json=item)
                else:
                    r = http.post("/v1/feedback/batch", json={"items": chunk})
            except httpx.TransportError:
                self.retries += 1
                time.sleep(0.2)
                continue
            if r.status_code == 503:
                self.retries += 1
                time.sleep(0.2)
                continue
            with self.lock:
                if r.status_code in (200, 202):
                    results = [r.json()] if kind == "single" else r.json()["accepted"]
                    for item, res in zip(chunk, results):
                        self.accepted[item["idempotency_key"]] = res["event_id"]
                else:
                    self.refused.append((r.status_code, r.text))
            return

    def run(self, threads: int = 4) -> None:
        def worker(share):
            with httpx.Client(
                base_url=self.url, headers={"Authorization": f"Bearer {USER_KEY}"}, timeout=60
            ) as http:
                for kind, chunk in share:
                    self._send(http, kind, chunk)

        pool = [threading.Thread(target=worker, args=(self.work[i::threads],)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()


def _wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _assert_all_in_kafka(gw, broker, submitter: Submitter, request_choices: list[list[str]]) -> None:
    assert not submitter.refused, submitter.refused[:3]
    assert len(submitter.accepted) == TOTAL
    _wait_until(lambda: scrape(gw).get(("alignloop_spool_events", ()), 1) == 0, 180)
    ours = {c.rsplit("-", 1)[0] for ids in request_choices for c in ids}
    seen: dict[str, int] = {}
    for record in read_all_kafka(broker.bootstrap):
        if record.topic != FEEDBACK:
            continue
        event = parse_event(record.value)
        if event.request_id in ours:
            seen[event.event_id] = seen.get(event.event_id, 0) + 1
    # After de-duplication by event id, Kafka holds exactly the accepted events.
    assert set(seen) == set(submitter.accepted.values())


def test_broker_outage_loses_nothing(outage_gateway, kafka_broker):
    requests = _serve_choices(outage_gateway, 100)
    submitter = Submitter(outage_gateway.url, _items(requests, "outage"))
    runner = threading.Thread(target=submitter.run)
    runner.start()
    _wait_until(lambda: submitter.count() >= 2_000, 300)
    kafka_broker.stop()
    stopped_at = submitter.count()
    time.sleep(8)
    assert scrape(outage_gateway).get(("alignloop_spool_events", ()), 0) > 0, "nothing waited for the broker"
    kafka_broker.start()
    runner.join(timeout=600)
    assert submitter.count() > stopped_at
    _assert_all_in_kafka(outage_gateway, kafka_broker, submitter, requests)


def test_gateway_crash_loses_nothing(outage_gateway, kafka_broker):
    requests = _serve_choices(outage_gateway, 100)
    submitter = Submitter(outage_gateway.url, _items(requests, "crash"))
    runner = threading.Thread(target=submitter.run)
    runner.start()
    _wait_until(lambda: submitter.count() >= 3_000, 300)
    outage_gateway.stop(kill=True)  # SIGKILL: no chance to flush anything
    time.sleep(2)
    outage_gateway.start(wait_ready=False)  # the feedback API answers before the engine is warm
    runner.join(timeout=600)
    assert submitter.retries > 0, "the crash went unnoticed by the client"
    _assert_all_in_kafka(outage_gateway, kafka_broker, submitter, requests)
