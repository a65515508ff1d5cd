"""The evaluation gate: a candidate policy is promoted only if, on held-out prompts, it

- beats the serving policy's mean reward-model score by at least `margin`,
- stays within `kl_budget` (mean per-answer KL from the SFT policy, on its greedy answers),
- does not raise the pretraining LM loss more than `ptx_regression` (relative) above SFT's,
- and has no NaN or infinite weight or metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from trainer.evaluate import greedy_responses, mean_kl, pretraining_loss, score
from trainer.models import load_causal_lm
from trainer.reward_model import RewardModel


@dataclass
class GateResult:
    """The decision and what it was based on."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def evaluate(candidate: Path, serving: Path, sft: Path, rm: Path, prompts: list[str], pretraining: list[str], *,
             margin: float, kl_budget: float, ptx_regression: float, max_new_tokens: int = 32) -> GateResult:
    """Run every check; the candidate passes only if all do."""
    tok = AutoTokenizer.from_pretrained(sft)
    reward_model = RewardModel.from_pretrained(rm).eval()
    cand, serv, ref = (load_causal_lm(p).eval() for p in (candidate, serving, sft))
    reasons: list[str] = []
    if any(not torch.isfinite(t).all() for t in cand.state_dict().values()):
        return GateResult(False, ["candidate has NaN or infinite weights"])

    cand_answers = greedy_responses(cand, tok, prompts, max_new_tokens)
    serv_answers = greedy_responses(serv, tok, prompts, max_new_tokens)
    with torch.no_grad():
        cand_reward = score(reward_model, tok, prompts, cand_answers).mean().item()
        serv_reward = score(reward_model, tok, prompts, serv_answers).mean().item()
    kl = mean_kl(cand, ref, tok, prompts, cand_answers)
    metrics = {"candidate_reward": cand_reward, "serving_reward": serv_reward, "kl_from_sft": kl,
               "eval_prompts": len(prompts)}
    if pretraining:  # plain PPO (no pretraining text) has no alignment-tax check
        metrics["candidate_ptx_loss"] = cand_ptx = pretraining_loss(cand, tok, pretraining)
        metrics["sft_ptx_loss"] = sft_ptx = pretraining_loss(ref, tok, pretraining)
        if cand_ptx > sft_ptx * (1 + ptx_regression):
            reasons.append(f"pretraining loss {cand_ptx:.3f} regresses past {sft_ptx:.3f} x {1 + ptx_regression}")
    if any(not math.isfinite(v) for v in metrics.values()):
        reasons.insert(0, "a metric is NaN or infinite")
    if not cand_reward > serv_reward + margin:
        reasons.append(f"reward {cand_reward:.3f} does not beat serving {serv_reward:.3f} by {margin}")
    if kl > kl_budget:
        reasons.append(f"KL from SFT {kl:.3f} exceeds the budget {kl_budget}")
    return GateResult(not reasons, reasons, metrics)
