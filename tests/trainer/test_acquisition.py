"""After a round, the reward model says which labelling items it is least sure of: it scores the
candidates of the queue's items still waiting for raters, and the registry carries the scores to
the gateways' queues."""

import pytest

from feedback.events import LABELLING_CALLER, CompletionServed, ServedChoice
from registry.store import PolicyRegistry
from tests.trainer.test_poisoning import delivered, ranked, served
from trainer.acquisition import labelling_uncertainty, uncertainty
from trainer.dataset_store import DatasetStore
from trainer.runtime import Runtime


def test_uncertainty_is_one_when_no_pair_can_be_told_apart_and_falls_with_the_margins():
    assert uncertainty([0.5, 0.5, 0.5]) == 1.0
    assert uncertainty([1.0, 0.0]) > uncertainty([3.0, 0.0]) > uncertainty([30.0, 0.0]) > 0.0
    assert uncertainty([30.0, 0.0]) < 1e-6
    assert uncertainty([2.0]) == 0.0  # nothing to order


def _item(rid: str, texts: list[str]) -> CompletionServed:
    return served(rid, LABELLING_CALLER).model_copy(
        update={
            "choices": [
                ServedChoice(choice_id=f"{rid}-{k}", text=t, completion_tokens=2) for k, t in enumerate(texts)
            ]
        }
    )


def test_the_reward_model_scores_the_items_still_waiting_for_raters(tmp_path, tiny_model_dir):
    store = DatasetStore(tmp_path / "d.db")
    store.store(
        delivered(
            [
                _item("same", ["A blue frog.", "A blue frog.", "A blue frog."]),
                _item("apart", ["A blue frog.", "Red.", "The cat sat on a green mat all day."]),
                _item("ranked", ["A blue frog.", "Red.", "A green cat."]),
                ranked("ranked", "rita", 0),
                served("user", "alice"),  # served to a user: not the queue's
            ]
        )
    )
    scores = labelling_uncertainty(
        store, tiny_model_dir, tiny_model_dir, Runtime(device="cpu"), raters=1, limit=10
    )
    assert set(scores) == {"same", "apart"}
    assert scores["same"] == pytest.approx(1.0)  # identical answers: a reward model cannot order them
    assert 0.0 < scores["apart"] < 1.0

    registry = PolicyRegistry(tmp_path / "registry")
    assert registry.uncertainty() == {}
    registry.publish_uncertainty(scores)
    assert registry.uncertainty() == scores
    (registry.root / "labelling-uncertainty.json").write_text('{"x": "not a number", "y": 0.5, "z": true}')
    assert registry.uncertainty() == {"y": 0.5}
    (registry.root / "labelling-uncertainty.json").write_text("[1, 2")
    assert registry.uncertainty() == {}
