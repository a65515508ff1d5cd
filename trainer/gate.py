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

from trainer.data import pad_batch, prompt_ids, response_ids
from trainer.lm import token_logprobs
from trainer.ppo_trainer import greedy_responses, pretraining_loss
from trainer.reward_model import RewardModel
from trainer.rm import score
from trainer.sft import load_policy


@dataclass
class GateResult:
    """The decision and what it was based on."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def mean_kl(policy, reference, tok, prompts: list[str], answers: list[str]) -> float:
    """Mean over answers of Σ_t log π(y_t) − log π_ref(y_t): the sequence KL estimate."""
    p_ids = [prompt_ids(tok, p) for p in prompts]
    ids, attn, resp = pad_batch([p + response_ids(tok, a) for p, a in zip(p_ids, answers)], tok.pad_token_id,
                                loss_from=[len(p) for p in p_ids])
    with torch.no_grad():
        diff = token_logprobs(policy(input_ids=ids, attention_mask=attn).logits, ids) - \
            token_logprobs(reference(input_ids=ids, attention_mask=attn).logits, ids)
    return (diff * resp[:, 1:]).sum(dim=1).mean().item()


def evaluate(candidate: Path, serving: Path, sft: Path, rm: Path, prompts: list[str], pretraining: list[str], *,
             margin: float, kl_budget: float, ptx_regression: float, max_new_tokens: int = 32) -> GateResult:
    """Run every check; the candidate passes only if all do."""
    tok = AutoTokenizer.from_pretrained(sft)
    reward_model = RewardModel.from_pretrained(rm).eval()
    cand, serv, ref = (load_policy(p).eval() for p in (candidate, serving, sft))
    reasons: list[str] = []
    if any(not torch.isfinite(t).all() for t in cand.state_dict().values()):
        return GateResult(False, ["candidate has NaN or infinite weights"])

    cand_answers = greedy_responses(cand, tok, prompts, max_new_tokens)
    serv_answers = greedy_responses(serv, tok, prompts, max_new_tokens)
    with torch.no_grad():
        cand_reward = score(reward_model, tok, prompts, cand_answers).mean().item()
        serv_reward = score(reward_model, tok, prompts, serv_answers).mean().item()
    kl = mean_kl(cand, ref, tok, prompts, cand_answers)
    cand_ptx, sft_ptx = pretraining_loss(cand, tok, pretraining), pretraining_loss(ref, tok, pretraining)
    metrics = {"candidate_reward": cand_reward, "serving_reward": serv_reward, "kl_from_sft": kl,
               "candidate_ptx_loss": cand_ptx, "sft_ptx_loss": sft_ptx, "eval_prompts": len(prompts)}
    if any(not math.isfinite(v) for v in metrics.values()):
        reasons.append("a metric is NaN or infinite")
    if not cand_reward > serv_reward + margin:
        reasons.append(f"reward {cand_reward:.3f} does not beat serving {serv_reward:.3f} by {margin}")
    if kl > kl_budget:
        reasons.append(f"KL from SFT {kl:.3f} exceeds the budget {kl_budget}")
    if cand_ptx > sft_ptx * (1 + ptx_regression):
        reasons.append(f"pretraining loss {cand_ptx:.3f} regresses past {sft_ptx:.3f} x {1 + ptx_regression}")
    return GateResult(not reasons, reasons, metrics)
