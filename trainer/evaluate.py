"""Measuring policies: their answers, their reward, their KL from a reference, and the alignment
tax (LM loss on pretraining text). Shared by the gate, the demo, benchmarks and tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoTokenizer

from trainer.data import pad_batch, pretraining_batch, prompt_ids, response_ids
from trainer.lm import lm_loss, token_logprobs
from trainer.models import load_causal_lm
from trainer.reward_model import RewardModel
from trainer.rollout import TransformersSampler


def greedy_responses(policy, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The policy's greedy answer to each prompt."""
    sampler = TransformersSampler(policy, tok.pad_token_id, tok.eos_token_id)
    out = sampler.generate([prompt_ids(tok, p) for p in prompts], max_new_tokens, 0.0, 0)
    return [tok.decode(o, skip_special_tokens=True) for o in out]


def sampled_responses(path: Path, prompts: list[str], per_prompt: int = 16, max_new_tokens: int = 24) -> list[str]:
    """per_prompt answers sampled at temperature 1 from the checkpoint at path, for each prompt."""
    tok = AutoTokenizer.from_pretrained(path)
    sampler = TransformersSampler(load_causal_lm(path), tok.pad_token_id, tok.eos_token_id)
    out = []
    for i, p in enumerate(prompts):
        ids = sampler.generate([prompt_ids(tok, p)] * per_prompt, max_new_tokens, 1.0, seed=1000 + i)
        out += [tok.decode(x, skip_special_tokens=True) for x in ids]
    return out


def score(model: torch.nn.Module, tok, prompts: list[str], responses: list[str], max_len: int = 256) -> torch.Tensor:
    """r(x, y) for each (prompt, response); every response is forwarded once."""
    seqs = [prompt_ids(tok, p) + response_ids(tok, r) for p, r in zip(prompts, responses)]
    ids, attn, _ = pad_batch(seqs, tok.pad_token_id, max_len=max_len)
    return model(ids, attn)


def mean_reward(policy, reward_model: RewardModel, tok, prompts: list[str], max_new_tokens: int = 32) -> float:
    """Mean RM score of the policy's greedy answers to prompts."""
    answers = greedy_responses(policy, tok, prompts, max_new_tokens)
    with torch.no_grad():
        return score(reward_model, tok, prompts, answers).mean().item()


def mean_kl(policy, reference, tok, prompts: list[str], answers: list[str]) -> float:
    """Mean over answers of Σ_t log π(y_t) − log π_ref(y_t): the sequence KL estimate."""
    p_ids = [prompt_ids(tok, p) for p in prompts]
    ids, attn, resp = pad_batch([p + response_ids(tok, a) for p, a in zip(p_ids, answers)], tok.pad_token_id,
                                loss_from=[len(p) for p in p_ids])
    with torch.no_grad():
        diff = token_logprobs(policy(input_ids=ids, attention_mask=attn).logits, ids) - \
            token_logprobs(reference(input_ids=ids, attention_mask=attn).logits, ids)
    return (diff * resp[:, 1:]).sum(dim=1).mean().item()


def pretraining_loss(policy, tok, texts: list[str]) -> float:
    """Mean LM loss of the policy on pretraining texts (the alignment-tax measure)."""
    ids, attn, mask = pretraining_batch(tok, texts, len(texts), random.Random(0))
    with torch.no_grad():
        return lm_loss(policy(input_ids=ids, attention_mask=attn).logits, ids, mask).item()
