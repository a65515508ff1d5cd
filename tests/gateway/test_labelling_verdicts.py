"""A rater's ranking of a labelling item is a verdict between versions only if the queue drew the
item at random (or by age): an item leased for being informative is ranked and trained on, but its
event carries no versions, so the canary's test and the leaderboard see a random sample."""

import asyncio

from core.config import ApiKeyConfig, LabellingConfig
from feedback.events import Comparison
from feedback.submission import Submission
from gateway.auth import Caller
from gateway.routers.feedback import _informative_items_are_no_verdicts
from promotion.labelling import INFORMATIVE, RANDOM, LabelQueue


def _ranking_of(queue: LabelQueue, rater: Caller) -> Submission:
    item = queue.lease(rater.name)
    assert item is not None
    ids = [c["id"] for c in item.candidates]
    versions = {cid: ("v0002" if cid.endswith("-0") else "v0001") for cid in ids}
    return Submission(
        Comparison(
            request_id=item.request_id, ranking=[[i] for i in ids], rater=rater.name, choice_versions=versions
        )
    )


def _kept_versions(share: float, tmp_path) -> tuple[str | None, dict | None]:
    queue = LabelQueue(tmp_path / f"labels-{share}.db", LabellingConfig(sample_rate=1.0, random_share=share))
    assert queue.offer("Describe a fox.")
    item_id, _ = queue.unfilled()[0]
    queue.fill(item_id, "req-1", [{"id": f"req-1-{k}", "text": f"answer {k}"} for k in range(3)], 0.7)
    rater = Caller("rita", "rater", ApiKeyConfig(key="k", name="rita", role="rater"))
    submission = _ranking_of(queue, rater)
    (kept,) = asyncio.run(_informative_items_are_no_verdicts(queue, [submission], rater))
    assert kept.event.ranking == submission.event.ranking  # the ranking itself is kept whole
    return queue.picked("req-1", "rita"), kept.event.choice_versions


def test_only_items_drawn_at_random_are_verdicts_between_versions(tmp_path):
    assert _kept_versions(0.0, tmp_path) == (INFORMATIVE, None)
    picked, versions = _kept_versions(1.0, tmp_path)
    assert picked == RANDOM and versions == {"req-1-0": "v0002", "req-1-1": "v0001", "req-1-2": "v0001"}
