"""The evaluation gate: a candidate policy is promoted only if, on held-out prompts, it

- beats the serving policy's mean reward-model score by at least `margin`, with confidence: on
  answers sampled as users are served (`samples_per_prompt` per prompt, the same seeds for both
  policies, so the answers pair up), the paired gain's lower bound, mean - z x standard error, must
  clear the margin. A candidate that is better only by the luck of a few samples is not promoted,
- stays within `kl_budget` (mean per-answer KL from the SFT policy, on its own sampled answers),
- does not raise the pretraining LM loss more than `ptx_regression` (relative) above SFT's,
- and has no NaN or infinite weight or metric;
- and the reward model that scores it must order held-out comparisons (of prompts and, where there
  are enough raters, of people it was not trained on) at least `min_judge_accuracy` well: a reward
  model that only fits the comparisons it learned from does not get to judge.

Policies are loaded one at a time (beside the reward model) and evaluated in batches, so the
gate's memory does not grow with the number of held-out prompts or with the model count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from trainer.calibration import calibration_error
from trainer.evaluate import BATCH, pretraining_loss, sampled_answers, score, sequence_logprobs
from trainer.models import load_causal_lm
from trainer.reward_model import RewardModel
from trainer.reward_training import accuracy, pair_margins
from trainer.runtime import Runtime


@dataclass
class GateResult:
    """The decision and what it was based on."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def evaluate(
    candidate: Path,
    serving: Path,
    sft: Path,
    rm: Path,
    prompts: list[str],
    pretraining: list[str],
    *,
    margin: float,
    kl_budget: float,
    ptx_regression: float,
    max_new_tokens: int = 32,
    runtime: Runtime | None = None,
    batch: int = BATCH,
    judge_set: list | None = None,
    min_judge_accuracy: float = 0.0,
    samples_per_prompt: int = 8,
    confidence_z: float = 0.0,
) -> GateResult:
    """Run every check; the candidate passes only if all do."""
    runtime = runtime or Runtime()
    tok = AutoTokenizer.from_pretrained(sft)
    reward_model = RewardModel.from_pretrained(rm, runtime, frozen=True)
    metrics: dict[str, float] = {"eval_prompts": len(prompts), "judge_rankings": len(judge_set or [])}
    reasons: list[str] = []
    if judge_set:
        margins = pair_margins(reward_model, tok, judge_set, runtime=runtime)
        metrics["judge_accuracy"] = accuracy(margins)
        metrics["judge_calibration_error"] = calibration_error(margins)
        if metrics["judge_accuracy"] < min_judge_accuracy:
            reasons.append(
                f"the reward model orders held-out comparisons only {metrics['judge_accuracy']:.2f} of the "
                f"time (needs {min_judge_accuracy}): its scores do not judge the candidate"
            )

    cand = load_causal_lm(candidate, runtime, frozen=True)
    if any(not torch.isfinite(t).all() for t in cand.state_dict().values()):
        return GateResult(False, ["candidate has NaN or infinite weights"])
    # Sampled answers, as users are served (a greedy answer to a few prompts changes only in jumps,
    # so small improvements look like none), and KL is only an expectation under the policy's own
    # samples. Both policies get the same seeds.
    with runtime.autocast():
        asked, answers = sampled_answers(cand, tok, prompts, samples_per_prompt, max_new_tokens, batch)
        cand_logp = sequence_logprobs(cand, tok, asked, answers, batch=batch)
        if pretraining:
            metrics["candidate_ptx_loss"] = pretraining_loss(cand, tok, pretraining, batch)
    del cand
    runtime.release_memory()
    cand_rewards = score(reward_model, tok, asked, answers, runtime=runtime)
    metrics["candidate_reward"] = cand_rewards.mean().item()
    metrics["candidate_answer_tokens"] = _mean_tokens(tok, answers)  # length is what an RM is hacked by first

    serv = load_causal_lm(serving, runtime, frozen=True)
    with runtime.autocast():
        _, serv_answers = sampled_answers(serv, tok, prompts, samples_per_prompt, max_new_tokens, batch)
    del serv
    runtime.release_memory()
    serv_rewards = score(reward_model, tok, asked, serv_answers, runtime=runtime)
    metrics["serving_reward"] = serv_rewards.mean().item()
    metrics["serving_answer_tokens"] = _mean_tokens(tok, serv_answers)
    gain = cand_rewards - serv_rewards  # paired: same prompt, same random numbers
    metrics["reward_gain"] = gain.mean().item()
    metrics["reward_gain_stderr"] = (gain.std() / math.sqrt(len(gain))).item() if len(gain) > 1 else 0.0
    metrics["reward_gain_lower"] = metrics["reward_gain"] - confidence_z * metrics["reward_gain_stderr"]

    ref = load_causal_lm(sft, runtime, frozen=True)
    with runtime.autocast():
        ref_logp = sequence_logprobs(ref, tok, asked, answers, batch=batch)
        if pretraining:  # plain PPO (no pretraining text) has no alignment-tax check
            metrics["sft_ptx_loss"] = pretraining_loss(ref, tok, pretraining, batch)
    del ref
    runtime.release_memory()
    metrics["kl_from_sft"] = float((cand_logp - ref_logp).mean()) if prompts else 0.0

    if any(not math.isfinite(v) for v in metrics.values()):
        reasons.append("a metric is NaN or infinite")
    if not metrics["reward_gain_lower"] > margin:
        reasons.append(
            f"reward {metrics['candidate_reward']:.3f} does not beat serving "
            f"{metrics['serving_reward']:.3f} by {margin} with confidence (gain "
            f"{metrics['reward_gain']:.3f} - {confidence_z} x {metrics['reward_gain_stderr']:.3f} = "
            f"{metrics['reward_gain_lower']:.3f})"
        )
    if metrics["kl_from_sft"] > kl_budget:
        reasons.append(f"KL from SFT {metrics['kl_from_sft']:.3f} exceeds the budget {kl_budget}")
    if pretraining and metrics["candidate_ptx_loss"] > metrics["sft_ptx_loss"] * (1 + ptx_regression):
        reasons.append(
            f"pretraining loss {metrics['candidate_ptx_loss']:.3f} regresses past "
            f"{metrics['sft_ptx_loss']:.3f} x {1 + ptx_regression}"
        )
    return GateResult(not reasons, reasons, metrics)


def _mean_tokens(tok, answers: list[str]) -> float:
    """Mean length of the answers in tokens."""
    return sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers) / max(len(answers), 1)
