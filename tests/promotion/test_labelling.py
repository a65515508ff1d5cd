"""The labelling queue leases the items that teach most first (the reward model least sure of their
order, or a canary's versions answering most differently) and draws a share of leases at random;
how each lease picked its item is kept, because only random (and unscored) picks are verdicts."""

import sqlite3

from core.config import LabellingConfig
from promotion.labelling import INFORMATIVE, OLDEST, RANDOM, LabelQueue, disagreement


def _queue(path, **config) -> LabelQueue:
    return LabelQueue(path, LabellingConfig(sample_rate=1.0, **config), seed=7)


def _item(queue: LabelQueue, prompt: str, versions_disagree: float | None = None) -> str:
    """Offer and fill one item; returns its request id."""
    assert queue.offer(prompt)
    item_id = next(i for i, p in queue.unfilled(limit=1000) if p == prompt)
    request_id = f"req-{prompt}"
    queue.fill(
        item_id,
        request_id,
        [{"id": f"{request_id}-{k}", "text": f"answer {k}"} for k in range(3)],
        versions_disagree,
    )
    return request_id


def test_the_most_informative_item_goes_first_then_the_oldest(tmp_path):
    queue = _queue(tmp_path / "labels.db", overlap=1, random_share=0.0)
    oldest = _item(queue, "oldest")
    somewhat = _item(queue, "somewhat")
    canary = _item(queue, "canary", versions_disagree=0.9)
    unsure = _item(queue, "unsure")
    newest = _item(queue, "newest")
    assert queue.score({somewhat: 0.3, unsure: 0.8, "req-gone": 1.0}) == 2

    leased = [queue.lease(f"rater-{i}") for i in range(6)]
    assert [i.request_id if i else None for i in leased] == [canary, unsure, somewhat, oldest, newest, None]
    picks = [queue.picked(i.request_id, f"rater-{n}") for n, i in enumerate(leased[:5])]
    assert picks == [INFORMATIVE, INFORMATIVE, INFORMATIVE, OLDEST, OLDEST]
    assert queue.picked(canary, "rater-1") is None  # not theirs
    shown = {i["request_id"]: i for i in queue.items()}
    assert (shown[unsure]["uncertainty"], shown[canary]["disagreement"]) == (0.8, 0.9)


def test_a_share_of_leases_draws_uniformly_at_random(tmp_path):
    queue = _queue(tmp_path / "labels.db", overlap=10_000, random_share=0.25)
    ids = [_item(queue, f"prompt {n}") for n in range(20)]
    top = ids[7]
    queue.score(dict.fromkeys(ids, 0.1) | {top: 0.9})
    picks: dict[str, list[str]] = {RANDOM: [], INFORMATIVE: []}
    for n in range(400):
        item = queue.lease(f"rater-{n}")
        assert item is not None
        picks[queue.picked(item.request_id, f"rater-{n}")].append(item.request_id)
    assert 60 < len(picks[RANDOM]) < 140, len(picks[RANDOM])  # 100 expected; sd about 9
    assert set(picks[INFORMATIVE]) == {top}
    assert len(set(picks[RANDOM])) >= 15  # spread over the 20 items, not the top one


def test_disagreement_between_versions_answers():
    assert disagreement([("v1", "a blue cat"), ("v2", "A blue cat")]) == 0.0
    assert disagreement([("v1", "a blue cat"), ("v2", "one red dog")]) == 1.0
    assert disagreement([("v1", "a blue cat"), ("v2", "a red cat"), ("v1", "a blue cat")]) == 0.5
    assert disagreement([("v1", "a blue cat"), ("v1", "one red dog")]) is None  # one version


def test_a_queue_file_from_before_scoring_is_upgraded_in_place(tmp_path):
    path = tmp_path / "labels.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE items (item_id TEXT PRIMARY KEY, prompt TEXT NOT NULL, created REAL NOT NULL, "
        "request_id TEXT UNIQUE, candidates TEXT);"
        "CREATE TABLE assignments (item_id TEXT NOT NULL, rater TEXT NOT NULL, leased_until REAL NOT NULL, "
        "done_at REAL, ranking TEXT, PRIMARY KEY (item_id, rater));"
        """INSERT INTO items VALUES ('item-1', 'kept', 1.0, 'req-kept', '[{"id": "c", "text": "t"}]');"""
    )
    old.close()
    queue = _queue(path, overlap=1, random_share=0.0)
    item = queue.lease("rita")
    assert item is not None and item.request_id == "req-kept"
    assert queue.picked("req-kept", "rita") == OLDEST
