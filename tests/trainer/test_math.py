"""Independent numeric checks of the training math, against values worked out by hand."""

import math

import pytest
import torch

from feedback.events import ranking_pairs
from trainer import ppo
from trainer.lm import lm_loss
from trainer.reward_model import kwise_loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_rm_loss_k4_with_a_tie():
    # Best first: response 0, then 1 and 2 tied, then 3.
    ranking = [[0], [1, 2], [3]]
    rewards = torch.tensor([2.0, 1.0, 0.5, -1.0])
    assert sorted(ranking_pairs(ranking)) == [
        (0, 1),
        (0, 2),
        (0, 3),
        (1, 3),
        (2, 3),
    ]  # the tie gives no (1,2)
    # By hand: differences 1.0, 1.5, 3.0, 2.0, 1.5 over C = 5 pairs.
    expected = (
        -(log_sigmoid(1.0) + log_sigmoid(1.5) + log_sigmoid(3.0) + log_sigmoid(2.0) + log_sigmoid(1.5)) / 5
    )
    assert kwise_loss(rewards, ranking).item() == pytest.approx(expected, abs=1e-6)
    assert kwise_loss(rewards, [[0, 1, 2, 3]]).item() == 0.0


def test_rm_loss_gradient_favours_the_winner():
    rewards = torch.zeros(3, requires_grad=True)
    kwise_loss(rewards, [[2], [0], [1]]).backward()
    assert rewards.grad[2] < 0 < rewards.grad[1]  # descending the loss raises r_2 and lowers r_1


def test_kl_rewards_gae_and_returns_on_three_tokens():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # 3 response tokens, then padding
    rewards, kl = ppo.kl_penalized_rewards(logp, ref, torch.tensor([2.0]), mask, beta=0.1)
    # kl = [0.5, -1.0, 0.0]; rewards = -0.1 * kl, plus the score 2.0 on the last token.
    assert kl[0].tolist() == pytest.approx([0.5, -1.0, 0.0, 0.0])
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.1, 2.0, 0.0])
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0]])  # the 9.0 is padding and must not leak in
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.9)
    # δ2 = 2.0 - 1.5 = 0.5;          A2 = 0.5
    # δ1 = 0.1 + 1.5 - 1.0 = 0.6;    A1 = 0.6 + 0.9 * 0.5 = 1.05
    # δ0 = -0.05 + 1.0 - 0.5 = 0.45; A0 = 0.45 + 0.9 * 1.05 = 1.395
    assert adv[0].tolist() == pytest.approx([1.395, 1.05, 0.5, 0.0])
    assert ret[0].tolist() == pytest.approx([1.895, 2.05, 2.0, 0.0])


def test_rows_of_different_lengths_get_the_score_on_their_own_last_token():
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards, _ = ppo.kl_penalized_rewards(logp, logp, torch.tensor([1.0, 5.0]), mask, beta=0.02)
    assert rewards.tolist() == [[0.0, 0.0, 1.0], [5.0, 0.0, 0.0]]


def test_clipped_policy_loss():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    mask = torch.ones(1, 2)
    loss, clipfrac = ppo.policy_loss(new, old, torch.tensor([[1.0, 1.0]]), mask, clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    loss, _ = ppo.policy_loss(new, old, torch.tensor([[-1.0, -1.0]]), mask, clip=0.2)
    # token 0: max(1.5, 1.2) = 1.5; token 1: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((1.5 + 0.8) / 2)


def test_value_loss_and_whitening():
    v_old = torch.tensor([[1.0, 1.0]])
    v_new = torch.tensor([[2.0, 1.1]])
    ret = torch.tensor([[3.0, 1.0]])
    mask = torch.ones(1, 2)
    # token 0: max((2-3)², (1.2-3)²) = 3.24; token 1: max(0.01, 0.01) = 0.01
    assert ppo.value_loss(v_new, v_old, ret, mask, clip=0.2).item() == pytest.approx(0.5 * (3.24 + 0.01) / 2)
    w = ppo.whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert w[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6) and w[0, 3].item() == 0.0


def test_ppo_ptx_is_ppo_plus_gamma_times_lm_loss():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    ids = torch.tensor([[0, 0, 1]])
    mask = torch.ones(1, 3)
    # targets: token 1 (=0) after logits[0] = [2, 0]; token 2 (=1) after logits[1] = [0, 1]
    expected_lm = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.e / (1 + math.e))) / 2
    ptx = lm_loss(logits, ids, mask)
    assert ptx.item() == pytest.approx(expected_lm, abs=1e-6)
    pg, vf = torch.tensor(0.3), torch.tensor(0.8)
    ppo_only = ppo.ppo_ptx_loss(pg, vf, None, vf_coef=0.1, ptx_coef=27.8)
    assert ppo_only.item() == pytest.approx(0.3 + 0.1 * 0.8)
    assert ppo.ppo_ptx_loss(pg, vf, ptx, vf_coef=0.1, ptx_coef=27.8).item() == pytest.approx(
        ppo_only.item() + 27.8 * expected_lm
    )
    assert ppo.ppo_ptx_loss(pg, vf, ptx, vf_coef=0.1, ptx_coef=0.0).item() == pytest.approx(ppo_only.item())


def test_adaptive_kl_controller_moves_beta_towards_target():
    ctl = ppo.AdaptiveKLController(beta=0.1, target=1.0, horizon=100)
    assert ctl.update(observed_kl=3.0, n_samples=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # too far: β up
    assert ctl.update(observed_kl=0.0, n_samples=10) < 0.1 * 1.02  # too close: β down


def test_a_rollout_batch_larger_than_the_prompt_set_uses_every_prompt_about_equally():
    import random
    from collections import Counter

    from trainer.ppo_training import rollout_prompts

    prompts = ["a", "b", "c"]
    counts = Counter(rollout_prompts(prompts, 16, random.Random(0)))
    assert sum(counts.values()) == 16 and set(counts) == set(prompts)
    assert max(counts.values()) - min(counts.values()) <= 1
    many = [str(i) for i in range(40)]
    picked = rollout_prompts(many, 16, random.Random(0))
    assert len(picked) == len(set(picked)) == 16  # enough prompts: no repeats


def test_each_rank_draws_its_own_pretraining_text_and_the_same_again_on_a_resume():
    from trainer.ppo_training import ptx_rng

    texts = [f"text {i}" for i in range(1000)]
    draw = lambda rank: ptx_rng(seed=0, iteration=3, rank=rank).sample(texts, 16)  # noqa: E731
    assert draw(0) != draw(1), "two ranks on the same batch would waste one of them"
    assert draw(1) == draw(1) and ptx_rng(0, 4, 1).sample(texts, 16) != draw(1)


def test_the_gates_prompt_subset_is_bounded_and_stable():
    from trainer.data import stable_subset

    prompts = [f"prompt {i}" for i in range(500)]
    picked = stable_subset(prompts, 64)
    assert len(picked) == 64 and set(picked) <= set(prompts)
    assert stable_subset(list(reversed(prompts)), 64) == picked  # arrival order does not matter
    assert set(stable_subset([*prompts, "a new one"], 64)) - set(picked) <= {"a new one"}
