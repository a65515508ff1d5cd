"""Which labelling items would teach the reward model most: those whose candidates it cannot order.

After a round, the new reward model scores the candidates of the labelling queue's newest items that
still wait for raters. An item's uncertainty is the mean, over its pairs of candidates, of
4 p (1 - p) with p = sigmoid(r_i - r_j), the Bradley-Terry probability the model gives one answer
beating the other: 1 when it cannot tell any two apart, near 0 when it is sure of every pair. The
trainer publishes the scores through the registry (registry/store.py), and each gateway's queue
leases the least certain first (promotion/labelling.py), keeping a random share of leases.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

from transformers import AutoTokenizer

from feedback.events import LABELLING_CALLER
from trainer.dataset_store import DatasetStore
from trainer.evaluate import score
from trainer.reward_model import RewardModel
from trainer.runtime import Runtime

log = logging.getLogger(__name__)


def uncertainty(rewards: list[float]) -> float:
    """Mean over pairs of candidates of 4 p (1 - p), p the reward model's chance that one beats the
    other: 1 (cannot tell them apart) .. 0 (sure of every pair)."""
    pairs = list(itertools.combinations(rewards, 2))
    if not pairs:
        return 0.0
    return sum(4 * _p(a - b) * (1 - _p(a - b)) for a, b in pairs) / len(pairs)


def _p(margin: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, margin))))


def uncertainties(
    sets: list[tuple[str, list[str]]], rm: Path, tokenizer: Path, runtime: Runtime
) -> list[float]:
    """The reward model's uncertainty about each (prompt, candidates) set; each candidate is
    forwarded once."""
    rewards = score(
        RewardModel.from_pretrained(rm, runtime, frozen=True),
        AutoTokenizer.from_pretrained(tokenizer),
        [prompt for prompt, texts in sets for _ in texts],
        [t for _, texts in sets for t in texts],
        runtime=runtime,
    ).tolist()
    out, at = [], 0
    for _, texts in sets:
        out.append(uncertainty(rewards[at : at + len(texts)]))
        at += len(texts)
    return out


def labelling_uncertainty(
    store: DatasetStore, rm: Path, tokenizer: Path, runtime: Runtime, *, raters: int, limit: int
) -> dict[str, float]:
    """Request id -> the reward model's uncertainty, for the newest `limit` labelling items that
    fewer than `raters` people ranked."""
    items = [i for i in store.waiting_items(LABELLING_CALLER, raters, limit) if len(i[2]) >= 2]
    if not items:
        return {}
    scores = uncertainties([(prompt, texts) for _, prompt, texts in items], rm, tokenizer, runtime)
    out = {request_id: u for (request_id, _, _), u in zip(items, scores)}
    log.info(
        "labelling: the reward model scored %d waiting items, mean uncertainty %.2f",
        len(out),
        sum(out.values()) / len(out),
    )
    return out
