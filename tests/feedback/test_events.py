"""Event schemas: versioned, validated, with rankings that expand to the right pairs."""

import json

import pytest
from pydantic import ValidationError

from feedback.events import (
    Comparison,
    CompletionServed,
    Demonstration,
    Rating,
    ServedChoice,
    parse_event,
    ranking_pairs,
)


def test_ranking_with_a_tie_expands_to_ordered_pairs():
    c = Comparison(request_id="r", ranking=[["a"], ["b", "c"], ["d"]], rater="u")
    assert sorted(ranking_pairs(c.ranking)) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]
    assert ranking_pairs([[0, 1]]) == []  # all tied: recorded, no pair


@pytest.mark.parametrize(
    "ranking", [[["a"]], [["a"], ["a"]], [["a", "b"], ["b"]], [[str(i)] for i in range(10)], [["a"], []]]
)
def test_bad_rankings_are_refused(ranking):
    with pytest.raises(ValidationError):
        Comparison(request_id="r", ranking=ranking, rater="u")


def test_round_trip_and_unique_ids():
    events = [
        CompletionServed(
            request_id="r",
            route="chat",
            messages=[{"role": "user", "content": "hi"}],
            prompt_text="x",
            prompt_tokens=3,
            choices=[ServedChoice(choice_id="r-0", text="yo", completion_tokens=1)],
            sampling={"n": 1},
            policy_version="v0001",
            caller="alice",
        ),
        Comparison(request_id="r", ranking=[["r-0"], ["r-1"]], rater="alice"),
        Rating(request_id="r", choice_id="r-0", rating=-1, rater="alice"),
        Demonstration(request_id="r", response="better", author="alice"),
    ]
    assert len({e.event_id for e in events}) == 4
    for e in events:
        assert parse_event(e.to_bytes()) == e
        assert e.key() == b"r"
        assert json.loads(e.to_bytes())["schema_version"] == 1


def test_unknown_versions_and_shapes_are_refused():
    good = json.loads(Rating(request_id="r", choice_id="c", rating=1, rater="u").to_bytes())
    with pytest.raises(ValueError, match="schema_version"):
        parse_event(json.dumps({**good, "schema_version": 2}))
    with pytest.raises(ValueError):
        parse_event(json.dumps({**good, "rating": 5}))
    with pytest.raises(ValueError):
        parse_event(json.dumps({**good, "type": "mystery"}))
