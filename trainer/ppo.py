"""PPO-ptx, the equations (InstructGPT, Ouyang et al. 2022; see ../shared/notes/instructgpt.md).

    objective(φ) = E[ r_θ(x, y) − β · log(π_φ(y|x) / π_SFT(y|x)) ] + γ · E_pretrain[ log π_φ(x) ]

Every function here is pure tensor math on [batch, response_len] tensors with a 0/1 mask over the
response tokens, so each term can be checked by hand (tests/trainer/test_math.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise x to unit variance (and zero mean) over the masked positions."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalized_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: −β·(log π − log π_ref) at every token, plus the RM score at the last one.

    Returns (rewards, kl) where kl is the per-token log-ratio."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = mask.long().cumsum(dim=1).argmax(dim=1)  # index of each row's last response token
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns (advantages, returns)."""
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # δ_t = r_t + γV_{t+1} − V_t
        running = delta + gamma * lam * running  # A_t = δ_t + γλA_{t+1}
        advantages[:, t] = running * m
        # Padding after the response keeps the values from beyond it out of the recursion.
        next_value = torch.where(m.bool(), values[:, t], next_value)
        running = running * m
    returns = advantages + values * mask  # R_t = A_t + V_t
    return advantages, returns


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss; returns (loss, fraction of tokens clipped)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """Clipped value loss: ½·max((V − R)², (clip(V) − R)²)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def ppo_ptx_loss(
    pg_loss: torch.Tensor,
    vf_loss: torch.Tensor,
    ptx_lm_loss: torch.Tensor | None,
    vf_coef: float,
    ptx_coef: float,
) -> torch.Tensor:
    """PPO's loss plus γ times the pretraining LM loss (γ = 0 or no batch: plain PPO)."""
    loss = pg_loss + vf_coef * vf_loss
    if ptx_lm_loss is not None and ptx_coef:
        loss = loss + ptx_coef * ptx_lm_loss
    return loss


@dataclass
class AdaptiveKLController:
    """Moves β so that the observed KL tracks a target (Ziegler et al. 2019)."""

    beta: float
    target: float
    horizon: int = 10_000

    def update(self, observed_kl: float, n_samples: int) -> float:
        """Adjust β after a batch of n_samples with mean KL observed_kl; returns the new β."""
        error = max(-0.2, min(0.2, observed_kl / self.target - 1.0))
        self.beta *= 1.0 + error * n_samples / self.horizon
        return self.beta
