"""Language-model quantities shared by SFT, PPO and the pretraining term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log π(token_t | tokens_<t) for t = 1..T-1: [batch, T-1]."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens mask marks as targets."""
    target_mask = mask[:, 1:].float()
    return -(token_logprobs(logits, input_ids) * target_mask).sum() / target_mask.sum().clamp(min=1)
