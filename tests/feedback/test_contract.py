"""Round trip over HTTP: what the gateway served and what users said of it reaches the topics,
schema-valid and keyed by request, on Kafka and on the embedded log alike."""

import pytest

from feedback.events import Comparison, CompletionServed, Demonstration, Rating, parse_event, ranking_pairs
from feedback.topics import COMPLETIONS, FEEDBACK
from tests.conftest import MODEL
from tests.feedback.helpers import read_all_kafka, wait_for_events


@pytest.fixture(params=["kafka", "embedded"])
def backend(request):
    if request.param == "kafka":
        return request.getfixturevalue("gateway"), request.getfixturevalue("kafka_broker").bootstrap
    return request.getfixturevalue("embedded_gateway"), None


def test_completion_and_feedback_round_trip(backend):
    gw, kafka = backend
    with gw.client() as c:
        served = c.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "n": 3,
                "max_tokens": 16,
                "seed": 5,
                "messages": [{"role": "user", "content": "Describe a cat."}],
            },
        )
        assert served.status_code == 200, served.text
        body = served.json()
        rid, ids = body["id"], [ch["id"] for ch in body["choices"]]
        answers = [
            c.post("/v1/feedback/rankings", json={"ranking": [ids[0], [ids[1], ids[2]]]}),
            c.post("/v1/feedback/pairwise", json={"chosen": ids[2], "rejected": ids[0]}),
            c.post("/v1/feedback/ratings", json={"choice_id": ids[1], "rating": -1}),
            c.post("/v1/feedback/demonstrations", json={"request_id": rid, "response": "A cat is small."}),
        ]
    assert [a.status_code for a in answers] == [202] * 4, [a.text for a in answers]
    feedback_ids = [a.json()["event_id"] for a in answers]

    found = wait_for_events(gw, kafka, set(feedback_ids))
    assert set(feedback_ids) <= found.keys()
    completion = [d for d in found.values() if d.topic == COMPLETIONS and d.event.request_id == rid]
    assert len(completion) == 1
    event = completion[0].event
    assert isinstance(event, CompletionServed) and completion[0].key == rid.encode()
    assert [ch.choice_id for ch in event.choices] == ids
    assert [ch.text for ch in event.choices] == [ch["message"]["content"] for ch in body["choices"]]
    assert event.caller == "alice" and event.policy_version == body["policy_version"]
    assert event.messages == [{"role": "user", "content": "Describe a cat."}]
    assert event.prompt_text == "<|user|>Describe a cat.<|end|><|assistant|>"

    ranking, pairwise, rating, demo = (found[i] for i in feedback_ids)
    assert all(d.topic == FEEDBACK and d.key == rid.encode() for d in (ranking, pairwise, rating, demo))
    assert isinstance(ranking.event, Comparison) and ranking.event.ranking == [[ids[0]], [ids[1], ids[2]]]
    assert ranking_pairs(ranking.event.ranking) == [(ids[0], ids[1]), (ids[0], ids[2])]
    assert pairwise.event.ranking == [[ids[2]], [ids[0]]] and pairwise.event.rater == "alice"
    assert isinstance(rating.event, Rating) and rating.event.rating == -1
    assert isinstance(demo.event, Demonstration) and demo.event.response == "A cat is small."

    # One prompt's events share a partition, so they are read in order.
    assert len({d.partition for d in (completion[0], ranking, pairwise, rating, demo)}) == 1
    if kafka:
        raw = {parse_event(r.value).event_id: r for r in read_all_kafka(kafka)}
        assert set(feedback_ids) <= raw.keys()
        assert raw[feedback_ids[0]].key == rid.encode()


def test_idempotent_resubmission_is_accepted_once(backend):
    gw, kafka = backend
    with gw.client() as c:
        body = c.post(
            "/v1/completions", json={"model": MODEL, "prompt": "The", "n": 2, "max_tokens": 8}
        ).json()
        ids = [ch["id"] for ch in body["choices"]]
        item = {"chosen": ids[1], "rejected": ids[0], "idempotency_key": "vote-1"}
        first = c.post("/v1/feedback/pairwise", json=item)
        again = c.post("/v1/feedback/pairwise", json=item)
        changed = c.post("/v1/feedback/pairwise", json={**item, "chosen": ids[0], "rejected": ids[1]})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {"event_id": first.json()["event_id"], "duplicate": True}
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "idempotency_conflict"
    found = wait_for_events(gw, kafka, {first.json()["event_id"]})
    same_request = [d for d in found.values() if d.topic == FEEDBACK and d.event.request_id == body["id"]]
    assert len(same_request) == 1
