"""Measuring policies: their answers, their reward, their KL from a reference, and the alignment
tax (LM loss on pretraining text). Shared by the gate, the demo, benchmarks and tests.

Everything runs in batches of at most `batch` prompts or texts, with sequences cut at `max_len`,
so memory stays bounded however many held-out prompts a long-running service accumulates.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoTokenizer

from trainer.data import encode_responses, pad_batch, pretraining_batch, prompt_ids, response_ids
from trainer.lm import lm_loss, token_logprobs
from trainer.models import load_causal_lm
from trainer.reward_model import RewardModel
from trainer.rollout import TransformersSampler
from trainer.runtime import Runtime

BATCH = 16
MAX_LEN = 256


def batches(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of at most size items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def greedy_responses(policy, tok, prompts: list[str], max_new_tokens: int, batch: int = BATCH) -> list[str]:
    """The policy's greedy answer to each prompt."""
    sampler = TransformersSampler(policy, tok.pad_token_id, tok.eos_token_id)
    out = []
    for chunk in batches(prompts, batch):
        out += sampler.generate([prompt_ids(tok, p) for p in chunk], max_new_tokens, 0.0, 0)
    return [tok.decode(o, skip_special_tokens=True) for o in out]


def sampled_answers(
    policy, tok, prompts: list[str], per_prompt: int, max_new_tokens: int, batch: int = BATCH, seed: int = 0
) -> tuple[list[str], list[str]]:
    """per_prompt answers sampled at temperature 1 to each prompt: (prompt of each answer, answers).
    The same seed gives two policies the same random numbers, so their difference is less noisy."""
    sampler = TransformersSampler(policy, tok.pad_token_id, tok.eos_token_id)
    repeated = [p for p in prompts for _ in range(per_prompt)]
    out = []
    for i, chunk in enumerate(batches(repeated, batch)):
        out += sampler.generate([prompt_ids(tok, p) for p in chunk], max_new_tokens, 1.0, seed + i)
    return repeated, [tok.decode(o, skip_special_tokens=True) for o in out]


def sampled_responses(
    path: Path,
    prompts: list[str],
    per_prompt: int = 16,
    max_new_tokens: int = 24,
    runtime: Runtime | None = None,
    seed: int = 1000,
) -> list[str]:
    """per_prompt answers sampled at temperature 1 from the checkpoint at path, for each prompt
    (the same ones for the same seed: policies are compared on equal draws)."""
    tok = AutoTokenizer.from_pretrained(path)
    sampler = TransformersSampler(
        load_causal_lm(path, runtime, frozen=True), tok.pad_token_id, tok.eos_token_id
    )
    out = []
    for i, p in enumerate(prompts):
        ids = sampler.generate([prompt_ids(tok, p)] * per_prompt, max_new_tokens, 1.0, seed=seed + i)
        out += [tok.decode(x, skip_special_tokens=True) for x in ids]
    return out


@torch.no_grad()
def score(
    model: torch.nn.Module,
    tok,
    prompts: list[str],
    responses: list[str],
    max_len: int = MAX_LEN,
    batch: int = 4 * BATCH,
    runtime: Runtime | None = None,
) -> torch.Tensor:
    """r(x, y) for each (prompt, response), on the CPU; every response is forwarded once."""
    runtime = runtime or Runtime(device=_device_of(model))
    out = []
    for start in range(0, len(prompts), batch):
        ids, attn = runtime.to(
            *encode_responses(tok, prompts[start : start + batch], responses[start : start + batch], max_len)
        )
        with runtime.autocast():
            out.append(model(ids, attn).float().cpu())
    return torch.cat(out)


def mean_reward(
    policy, reward_model: RewardModel, tok, prompts: list[str], max_new_tokens: int = 32, batch: int = BATCH
) -> float:
    """Mean RM score of the policy's greedy answers to prompts."""
    answers = greedy_responses(policy, tok, prompts, max_new_tokens, batch)
    return score(reward_model, tok, prompts, answers, batch=batch).mean().item()


@torch.no_grad()
def sequence_logprobs(
    policy, tok, prompts: list[str], answers: list[str], max_len: int = MAX_LEN, batch: int = BATCH
) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) of each answer (cut at max_len tokens with its prompt), on the CPU."""
    device, out = _device_of(policy), []
    for start in range(0, len(prompts), batch):
        p_ids = [prompt_ids(tok, p) for p in prompts[start : start + batch]]
        seqs = [p + response_ids(tok, a) for p, a in zip(p_ids, answers[start : start + batch])]
        ids, attn, resp = (
            t.to(device)
            for t in pad_batch(seqs, tok.pad_token_id, loss_from=[len(p) for p in p_ids], max_len=max_len)
        )
        logp = token_logprobs(policy(input_ids=ids, attention_mask=attn).logits, ids)
        out.append((logp * resp[:, 1:]).sum(dim=1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def mean_kl(
    policy, reference, tok, prompts: list[str], answers: list[str], max_len: int = MAX_LEN, batch: int = BATCH
) -> float:
    """Mean over answers of Σ_t log π(y_t) − log π_ref(y_t): the sequence KL estimate."""
    diff = sequence_logprobs(policy, tok, prompts, answers, max_len, batch) - sequence_logprobs(
        reference, tok, prompts, answers, max_len, batch
    )
    return diff.mean().item() if len(diff) else 0.0


@torch.no_grad()
def pretraining_loss(policy, tok, texts: list[str], batch: int = BATCH) -> float:
    """Mean LM loss per token of the policy on pretraining texts (the alignment-tax measure)."""
    device, loss_sum, tokens = _device_of(policy), 0.0, 0
    for chunk in batches(texts, batch):
        ids, attn, mask = (t.to(device) for t in pretraining_batch(tok, chunk, len(chunk), random.Random(0)))
        n = int(mask[:, 1:].sum())
        loss_sum += lm_loss(policy(input_ids=ids, attention_mask=attn).logits, ids, mask).item() * n
        tokens += n
    return loss_sum / max(tokens, 1)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
