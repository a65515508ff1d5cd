"""The recipe learns, on a synthetic task whose hidden rule the trainer never sees:
the RM ranks held-out responses like the rule; PPO raises the RM score of greedy answers to
held-out prompts; PPO-ptx keeps the pretraining LM loss lower than PPO with the same settings."""

import pytest
from transformers import AutoTokenizer

from core.config import PPOConfig, RMConfig
from synthetic import task
from synthetic.corpus import ANIMALS, pretraining_texts
from trainer.evaluate import mean_reward, pretraining_loss
from trainer.models import load_causal_lm
from trainer.ppo_training import train_ppo
from trainer.reward_model import RewardModel
from trainer.reward_training import train_rm

TRAIN_PROMPTS = [f"Describe a {a}." for a in ANIMALS[:7]] * 4
HELDOUT_PROMPTS = [f"Describe a {a}." for a in ANIMALS[7:]]
PPO = PPOConfig(
    iterations=12,
    rollout_batch=16,
    minibatch=8,
    max_new_tokens=24,
    learning_rate=2e-4,
    rollout_engine="transformers",
    save_every=0,
    seed=3,
)


@pytest.fixture(scope="module")
def stages(tmp_path_factory, sft_model):
    root = tmp_path_factory.mktemp("recipe")
    demos = task.demonstrations(480, seed=1)
    sft = sft_model  # the tiny model after SFT on these demonstrations (tests/trainer/conftest.py)
    rankings = task.rankings(240, k=4, seed=2) + task.rankings(240, k=9, seed=3)
    rm_metrics = train_rm(
        sft,
        rankings,
        root / "rm",
        RMConfig(batch_size=8, learning_rate=1e-3, eval_fraction=0.3),
        reference=demos[:64],
    )
    return root, sft, root / "rm", rm_metrics


def test_reward_model_learns_the_hidden_rule(stages):
    _, _, _, metrics = stages
    assert metrics["heldout_rankings"] > 50
    print(f"\nRM: {metrics}")
    assert metrics["heldout_accuracy"] >= 0.85, metrics


def test_reference_responses_score_zero_on_average(stages):
    _, sft, rm_dir, _ = stages
    from trainer.evaluate import score

    rm = RewardModel.from_pretrained(rm_dir).eval()
    demos = task.demonstrations(480, seed=1)[:64]
    import torch

    with torch.no_grad():
        mean = score(
            rm, AutoTokenizer.from_pretrained(sft), [p for p, _ in demos], [y for _, y in demos]
        ).mean()
    assert abs(mean.item()) < 1e-3


def test_ppo_raises_reward_and_ptx_limits_the_alignment_tax(stages):
    root, sft, rm_dir, _ = stages
    tok = AutoTokenizer.from_pretrained(sft)
    rm = RewardModel.from_pretrained(rm_dir).eval()
    pretrain_train = pretraining_texts(400, seed=11)
    pretrain_eval = pretraining_texts(64, seed=12)
    before = mean_reward(load_causal_lm(sft).eval(), rm, tok, HELDOUT_PROMPTS)

    train_ppo(
        sft, rm_dir, TRAIN_PROMPTS, pretrain_train, root / "ppo", PPO.model_copy(update={"ptx_coef": 0.0})
    )
    train_ppo(
        sft, rm_dir, TRAIN_PROMPTS, pretrain_train, root / "ppo_ptx", PPO.model_copy(update={"ptx_coef": 1.0})
    )
    ppo_policy, ptx_policy = load_causal_lm(root / "ppo").eval(), load_causal_lm(root / "ppo_ptx").eval()

    after = mean_reward(ppo_policy, rm, tok, HELDOUT_PROMPTS)
    ptx_loss, ppo_loss = (
        pretraining_loss(ptx_policy, tok, pretrain_eval),
        pretraining_loss(ppo_policy, tok, pretrain_eval),
    )
    sft_loss = pretraining_loss(load_causal_lm(sft).eval(), tok, pretrain_eval)
    print(
        f"\nheld-out greedy reward: SFT {before:.3f} -> PPO {after:.3f}; pretraining LM loss: SFT {sft_loss:.3f}, "
        f"PPO {ppo_loss:.3f}, PPO-ptx {ptx_loss:.3f}"
    )
    assert after > before + 0.1, (before, after)
    assert ptx_loss < ppo_loss
