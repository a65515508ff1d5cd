"""Hostile or malformed feedback is refused with the documented status and leaves no event behind."""

import json
import time

import httpx
import pytest

from feedback.topics import FEEDBACK
from tests.conftest import ADMIN_KEY, MODEL, RATER_KEY, USER2_KEY, USER_KEY
from tests.feedback.helpers import read_all_kafka
from tests.gateway.test_metrics import scrape


def accepted_count(gateway) -> float:
    return sum(
        v
        for (name, labels), v in scrape(gateway).items()
        if name == "alignloop_feedback_events_total" and ("outcome", "accepted") in labels
    )


def feedback_on_kafka(gateway, broker) -> int:
    deadline = time.monotonic() + 30
    while scrape(gateway).get(("alignloop_spool_events", ()), 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    return sum(1 for r in read_all_kafka(broker.bootstrap) if r.topic == FEEDBACK)


@pytest.fixture(scope="module")
def served(gateway):
    """Two requests by alice (3 choices each) and one by bob."""
    with gateway.client() as c:
        a = [
            c.post("/v1/completions", json={"model": MODEL, "prompt": "The", "n": 3, "max_tokens": 6}).json()
            for _ in range(2)
        ]
    with gateway.client(USER2_KEY) as c:
        b = c.post("/v1/completions", json={"model": MODEL, "prompt": "A", "n": 2, "max_tokens": 6}).json()
    ids = lambda r: [ch["id"] for ch in r["choices"]]  # noqa: E731
    return {"a1": ids(a[0]), "a2": ids(a[1]), "b": ids(b), "a1_request": a[0]["id"], "b_request": b["id"]}


def cases(s):
    a, a2, b = s["a1"], s["a2"], s["b"]
    return [
        ("rankings", {"ranking": [a[0]]}, 400, None),
        ("rankings", {"ranking": [f"x{i}" for i in range(10)]}, 400, None),
        ("rankings", {"ranking": [a[0], [a[1], a[2], *[f"x{i}" for i in range(7)]]]}, 400, "bad_k"),
        ("rankings", {"ranking": [a[0], a[0], a[1]]}, 400, "duplicate_choice"),
        ("rankings", {"ranking": [a[0], [a[1], a[0]]]}, 400, "duplicate_choice"),
        ("rankings", {"ranking": [a[0], "cmpl-never-served-0"]}, 404, "unknown_choice"),
        ("rankings", {"ranking": [a[0], a2[0]]}, 400, "mixed_requests"),
        ("rankings", {"ranking": [b[0], b[1]]}, 403, "not_your_completion"),
        ("rankings", {"ranking": "abc"}, 400, None),
        ("pairwise", {"chosen": a[0], "rejected": a[0]}, 400, "duplicate_choice"),
        ("pairwise", {"chosen": a[0]}, 400, None),
        ("pairwise", {"chosen": b[0], "rejected": b[1]}, 403, "not_your_completion"),
        ("ratings", {"choice_id": a[0], "rating": 5}, 400, None),
        ("ratings", {"choice_id": b[0], "rating": 1}, 403, "not_your_completion"),
        ("ratings", {"choice_id": "nope", "rating": 1}, 404, "unknown_choice"),
        ("demonstrations", {"request_id": s["b_request"], "response": "mine"}, 403, "not_your_completion"),
        ("demonstrations", {"request_id": "cmpl-unknown", "response": "x"}, 404, "unknown_request"),
        ("demonstrations", {"request_id": s["a1_request"], "response": ""}, 400, None),
        ("demonstrations", {"request_id": s["a1_request"], "response": "x" * 16_385}, 400, None),
        ("demonstrations", {"request_id": s["a1_request"], "response": "x" * 70_000}, 413, "body_too_large"),
        ("batch", {"items": []}, 400, None),
        ("batch", {"items": [{"kind": "rating", "choice_id": a[0], "rating": 1}] * 101}, 400, None),
        (
            "batch",
            {
                "items": [
                    {"kind": "rating", "choice_id": a[0], "rating": 1},
                    {"kind": "ranking", "ranking": [a[0], b[0]]},
                ]
            },
            403,
            "not_your_completion",
        ),
        (
            "batch",
            {"items": [{"kind": "rating", "choice_id": a[0], "rating": 1}, {"kind": "vote"}]},
            400,
            None,
        ),
    ]


def test_hostile_feedback_is_refused_and_leaves_nothing(gateway, kafka_broker, served):
    before_metric, before_kafka = accepted_count(gateway), feedback_on_kafka(gateway, kafka_broker)
    with gateway.client() as c:
        for route, body, status, code in cases(served):
            r = c.post(f"/v1/feedback/{route}", json=body)
            assert r.status_code == status, (route, body, r.text)
            err = r.json()["error"]
            assert err["message"]
            if code:
                assert err["code"] == code, (route, body, err)
        r = c.post(
            "/v1/feedback/batch",
            json={
                "items": [
                    {"kind": "rating", "choice_id": served["a1"][0], "rating": 1},
                    {"kind": "rating", "choice_id": "nope", "rating": 1},
                ]
            },
        )
        assert r.status_code == 404 and r.json()["error"]["param"] == "items.1.choice_id"
    for key, status in ((ADMIN_KEY, 403), ("sk-wrong", 401)):
        r = httpx.post(
            f"{gateway.url}/v1/feedback/ratings",
            headers={"Authorization": f"Bearer {key}"},
            json={"choice_id": served["a1"][0], "rating": 1},
        )
        assert r.status_code == status
    assert accepted_count(gateway) == before_metric
    assert feedback_on_kafka(gateway, kafka_broker) == before_kafka


def test_a_rater_may_rate_only_items_leased_to_it_and_batches_are_all_or_nothing(gateway, served):
    """The rater role does not make anyone's completions ratable: a rater's feedback on a request not
    served to it must be on a labelling item it holds (tests/ui/test_labelling_queue.py ranks one)."""
    with gateway.client(RATER_KEY) as c:
        r = c.post("/v1/feedback/rankings", json={"ranking": [served["b"][1], served["b"][0]]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "not_leased", r.text
        refused = c.post(
            "/v1/feedback/batch",
            json={
                "items": [
                    {"kind": "rating", "choice_id": served["a1"][0], "rating": 1},
                    {"kind": "demonstration", "request_id": served["b_request"], "response": "Better."},
                ]
            },
        )
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "items.0.choice_id", (
            refused.text
        )
    with gateway.client(USER_KEY) as c:
        ok = c.post(
            "/v1/feedback/batch",
            json={
                "items": [
                    {"kind": "rating", "choice_id": served["a1"][0], "rating": 1},
                    {"kind": "pairwise", "chosen": served["a2"][0], "rejected": served["a2"][1], "tie": True},
                    {"kind": "demonstration", "request_id": served["a1_request"], "response": "Better."},
                ]
            },
        )
    assert ok.status_code == 202, ok.text
    assert len({a["event_id"] for a in ok.json()["accepted"]}) == 3


def test_the_short_way_in_answers_as_the_routes_do(gateway, served):
    """Single events sent as application/json take gateway/feedback_fast_path.py; the same sent as
    application/x+json (JSON to FastAPI, not to the fast path) take FastAPI's routes. Every answer
    must be the same either way: acceptances, each refusal, and the refusals the fast path hands on."""
    a, b = served["a1"], served["b"]
    requests = [
        ("ratings", {"choice_id": a[0], "rating": 1}, USER_KEY),
        ("pairwise", {"chosen": a[0], "rejected": a[1], "tie": True}, USER_KEY),
        ("rankings", {"ranking": [a[2], [a[0], a[1]]]}, USER_KEY),
        ("demonstrations", {"request_id": served["a1_request"], "response": "better"}, USER_KEY),
        ("ratings", {"choice_id": b[0], "rating": 1}, USER_KEY),  # 403: another caller's
        ("ratings", {"choice_id": b[0], "rating": 1}, RATER_KEY),  # 403: not leased to the rater
        ("ratings", {"choice_id": "nope", "rating": 1}, USER_KEY),  # 404
        ("rankings", {"ranking": [a[0], a[0]]}, USER_KEY),  # 400 from the handler
        ("ratings", {"choice_id": a[0], "rating": 5}, USER_KEY),  # 400 from validation
        ("ratings", {"choice_id": a[0], "rating": 1, "extra": 1}, USER_KEY),
        ("pairwise", {"chosen": a[0], "rejected": a[1]}, "sk-not-a-key"),  # 401
        ("ratings", {"choice_id": a[0], "rating": 1}, ADMIN_KEY),  # 403: the admin key
        ("ratings", [1, 2], USER_KEY),
    ]
    before = accepted_count(gateway)
    for route, body, key in requests:
        answers = []
        for content_type in ("application/json", "application/x+json"):
            r = httpx.post(
                f"{gateway.url}/v1/feedback/{route}",
                content=json.dumps(body),
                timeout=60,
                headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
            )
            answer = r.json()
            answers.append((r.status_code, {k: v for k, v in answer.items() if k != "event_id"}))
            assert r.status_code in (202, 400, 401, 403, 404), (route, body, r.status_code, answer)
        assert answers[0] == answers[1], (route, body, answers)
    assert accepted_count(gateway) - before == 2 * 4  # both ways stored every acceptance

    # Not JSON at all, and JSON that is not UTF-8 text: the route's own refusal, either way.
    for content in (b"{not json", b'{"choice_id": "\xff", "rating": 1}'):
        r = httpx.post(
            f"{gateway.url}/v1/feedback/ratings",
            content=content,
            timeout=60,
            headers={"Authorization": f"Bearer {USER_KEY}", "Content-Type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
