"""One user cannot steer training: one ranking per (user, request) counts, each user's weight in a
round is capped, and the gate's reward model is checked on people and prompts it did not learn from."""

from core.config import Settings
from feedback.events import Comparison, CompletionServed, ServedChoice
from feedback.source import Delivered
from synthetic import task
from trainer.dataset_store import DatasetStore
from trainer.gate import evaluate
from trainer.reward_model import RewardModel
from trainer.round import split_for_judging
from trainer.service import TrainerService


def served(
    rid: str, caller: str, prompt: str = "Describe a fox.", messages: list | None = None, route: str = "chat"
) -> CompletionServed:
    """A served chat completion of 3 answers ("answer 0".."answer 2"): of `prompt`, or of `messages`."""
    return CompletionServed(
        request_id=rid,
        route=route,
        messages=messages
        if messages is not None or route != "chat"
        else [{"role": "user", "content": prompt}],
        prompt_text=prompt,
        prompt_tokens=3,
        sampling={},
        policy_version="v0001",
        caller=caller,
        choices=[
            ServedChoice(choice_id=f"{rid}-{k}", text=f"answer {k}", completion_tokens=2) for k in range(3)
        ],
    )


def ranked(rid: str, rater: str, first: int) -> Comparison:
    others = [k for k in range(3) if k != first]
    return Comparison(
        request_id=rid, ranking=[[f"{rid}-{first}"], [f"{rid}-{k}" for k in others]], rater=rater
    )


def delivered(events: list) -> list[Delivered]:
    return [Delivered("t", 0, i, None, e) for i, e in enumerate(events)]


def test_one_ranking_per_user_and_request_counts_the_latest(tmp_path):
    store = DatasetStore(tmp_path / "d.db")
    store.store(
        delivered(
            [
                served("r1", "mallory"),
                ranked("r1", "mallory", 0),
                ranked("r1", "mallory", 0),
                ranked("r1", "mallory", 0),
                ranked("r1", "mallory", 2),
                ranked("r1", "alice", 1),
            ]
        )
    )
    assert store.counts()["comparisons"] == 5  # everything is stored (and in the lineage) ...
    rankings = store.ranked()
    assert len(rankings) == 2 == store.joined_count()  # ... one ranking per (rater, request) counts
    mallory = next(r for r in rankings if r.rater == "mallory")
    assert mallory.ranking.responses[mallory.ranking.ranking[0][0]] == "answer 2", "the latest ranking wins"


def test_each_users_weight_is_capped(tmp_path):
    store = DatasetStore(tmp_path / "d.db", per_user_cap=10)
    events = []
    for i in range(100):  # one user floods: 100 requests, 100 rankings, 100 prompts
        events += [served(f"m{i}", "mallory", f"Say {i}."), ranked(f"m{i}", "mallory", 0)]
    for i in range(5):
        events += [served(f"a{i}", "alice", f"Describe a {i}."), ranked(f"a{i}", "alice", 1)]
    store.store(delivered(events))
    raters = [r.rater for r in store.ranked()]
    assert raters.count("mallory") == 10 and raters.count("alice") == 5
    assert store.joined_count() == 15 == store.new_since(0), "a round is triggered by capped counts"
    assert sum(p.startswith("Say ") for p in store.prompts()) == 10
    assert store.per_user() == {"mallory": {"stored": 100, "used": 10}, "alice": {"stored": 5, "used": 5}}

    # After a round, what arrives is new, still capped per user; raters already at the cap keep
    # counting (the capped total would stay at 10 for mallory: with one key, no round ever again).
    seq = store.last_seq()
    more = []
    for i in range(100, 130):
        more += [served(f"m{i}", "mallory", f"Say {i}."), ranked(f"m{i}", "mallory", 0)]
    for i in range(5, 7):
        more += [served(f"a{i}", "alice", f"Describe a {i}."), ranked(f"a{i}", "alice", 1)]
    store.store(delivered(more))
    assert store.joined_count() == 17 and store.new_since(seq) == 12


def test_the_gates_judge_is_held_out_by_user_and_prompt(tmp_path, tiny_model_dir):
    settings = Settings(state_dir=tmp_path)
    settings.train.loop.metrics_port, settings.train.ppo.ptx_coef = 0, 0.0
    service = TrainerService(settings)
    try:
        events = []
        for u in range(20):
            for i, r in enumerate(task.rankings(3, k=3, seed=u)):
                rid = f"u{u}-{i}"
                events.append(served(rid, f"user{u}", r.prompt))
                events.append(
                    Comparison(
                        request_id=rid,
                        rater=f"user{u}",
                        ranking=[[f"{rid}-{k}" for k in g] for g in r.ranking],
                    )
                )
        service.store.store(delivered(events))
        ranked_by = service.store.ranked()
        train, judge = split_for_judging(ranked_by, settings.train.loop)
        assert train and judge and len(train) + len(judge) == len(ranked_by)
        judged = {id(r) for r in judge}
        judge_raters = {r.rater for r in ranked_by if id(r.ranking) in judged}
        train_raters = {r.rater for r in ranked_by if id(r.ranking) not in judged}
        assert judge_raters - train_raters, "some raters must be held out entirely"
    finally:
        service.close()

    # A reward model that orders held-out comparisons no better than chance does not get to judge.
    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
    result = evaluate(
        tiny_model_dir,
        tiny_model_dir,
        tiny_model_dir,
        tmp_path / "rm",
        ["Describe a fox."],
        [],
        margin=-1000.0,
        kl_budget=1000.0,
        ptx_regression=1.0,
        max_new_tokens=4,
        judge_set=judge,
        min_judge_accuracy=0.99,
    )
    assert not result.passed and "held-out comparisons" in result.reasons[0], result
    assert 0.0 <= result.metrics["judge_accuracy"] < 0.99
    assert Settings().train.loop.gate_margin > 0, "a candidate must beat the serving policy by a margin"


def test_a_gain_within_the_gates_noise_is_not_promoted(tiny_model_dir, tmp_path):
    # An untrained reward head scores two nearby policies' answers by chance: the candidate's mean
    # gain is noise. A margin just under that mean lets a plain mean comparison promote it; the
    # confidence bound (mean - 1.64 standard errors) does not.
    from tests.conftest import perturbed_copy

    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
    candidate = perturbed_copy(tiny_model_dir, tmp_path / "candidate", seed=3)

    def gate(margin: float, z: float):
        return evaluate(
            candidate,
            tiny_model_dir,
            tiny_model_dir,
            tmp_path / "rm",
            ["Describe a fox.", "Describe a cat."],
            [],
            margin=margin,
            kl_budget=1000.0,
            ptx_regression=1.0,
            max_new_tokens=8,
            samples_per_prompt=16,
            confidence_z=z,
        )

    measured = gate(-1000.0, 0.0).metrics
    assert measured["reward_gain_stderr"] > 0
    margin = measured["reward_gain"] - measured["reward_gain_stderr"]
    assert gate(margin, 0.0).passed
    doubtful = gate(margin, 1.64)
    assert not doubtful.passed and "with confidence" in doubtful.reasons[0], doubtful.reasons
    assert Settings().train.loop.gate_confidence_z > 0, "the default gate asks for confidence"
