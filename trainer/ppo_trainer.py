"""The PPO-ptx training loop (the math is in trainer/ppo.py).

Per iteration: sample responses to a batch of prompts; score them with the frozen RM; compute
per-token KL-penalised rewards against the frozen SFT policy, GAE advantages and returns; then
PPO epochs over minibatches, each update adding γ · the LM loss on a pretraining batch; finally
push the new weights into the sampler.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from alignloop.config import EngineConfig, PPOConfig
from trainer import ppo
from trainer.checkpoint import TrainState, has_training_state, load_training_state, save_training_state
from trainer.data import pad_batch, prompt_ids
from trainer.distributed import World, unwrap, wrap
from trainer.lm import lm_loss, token_logprobs
from trainer.reward_model import RewardModel
from trainer.rollout import TransformersSampler, VLLMSampler
from trainer.sft import load_policy

log = logging.getLogger(__name__)
VALUE_DIR = "value"


def _pad_to(ids: torch.Tensor, width: int, pad: int) -> torch.Tensor:
    return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad)


def pretraining_batch(tok, texts: list[str], n: int, rng: random.Random, max_len: int = 128):
    """n pretraining texts as (ids, attention, loss mask over every real token)."""
    seqs = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in rng.sample(texts, n)]
    return pad_batch(seqs, tok.pad_token_id, max_len=max_len)


def greedy_responses(policy, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The policy's greedy answer to each prompt."""
    sampler = TransformersSampler(policy, tok.pad_token_id, tok.eos_token_id)
    out = sampler.generate([prompt_ids(tok, p) for p in prompts], max_new_tokens, 0.0, 0)
    return [tok.decode(o, skip_special_tokens=True) for o in out]


def sampled_responses(path: Path, prompts: list[str], per_prompt: int = 16, max_new_tokens: int = 24) -> list[str]:
    """per_prompt answers sampled at temperature 1 from the checkpoint at path, for each prompt."""
    tok = AutoTokenizer.from_pretrained(path)
    sampler = TransformersSampler(load_policy(path), tok.pad_token_id, tok.eos_token_id)
    out = []
    for i, p in enumerate(prompts):
        ids = sampler.generate([prompt_ids(tok, p)] * per_prompt, max_new_tokens, 1.0, seed=1000 + i)
        out += [tok.decode(x, skip_special_tokens=True) for x in ids]
    return out


def mean_reward(policy, reward_model: RewardModel, tok, prompts: list[str], max_new_tokens: int = 32) -> float:
    """Mean RM score of the policy's greedy answers to prompts."""
    from trainer.rm import score

    answers = greedy_responses(policy, tok, prompts, max_new_tokens)
    with torch.no_grad():
        return score(reward_model, tok, prompts, answers).mean().item()


def pretraining_loss(policy, tok, texts: list[str]) -> float:
    """Mean LM loss of the policy on pretraining texts (the alignment-tax measure)."""
    ids, attn, mask = pretraining_batch(tok, texts, len(texts), random.Random(0))
    with torch.no_grad():
        return lm_loss(policy(input_ids=ids, attention_mask=attn).logits, ids, mask).item()


def train_ppo(sft_dir: Path, rm_dir: Path, prompts: list[str], pretrain_texts: list[str], out_dir: Path,
              cfg: PPOConfig, world: World = World(), engine: EngineConfig = EngineConfig(),
              sampler: "VLLMSampler | None" = None, init: Path | None = None) -> dict[str, float]:
    """Optimise the SFT policy against the RM into out_dir (HF checkpoint; resumes if it can).

    With rollout_engine "vllm" a VLLMSampler is started on the policy (or `sampler`, already
    running on a checkpoint of the same architecture, is reused) and updated in place each
    iteration; "transformers" samples from the live policy."""
    out_dir = Path(out_dir)
    resume = has_training_state(out_dir)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(sft_dir)
    policy = load_policy(out_dir if resume else (init or sft_dir)).train()
    reference = load_policy(sft_dir).eval().requires_grad_(False)
    reward_model = RewardModel.from_pretrained(rm_dir).eval().requires_grad_(False)
    value = RewardModel.from_pretrained(out_dir / VALUE_DIR if resume else rm_dir).train()  # value head from the RM
    # The value model is called through a method (token_values), not forward(), so DDP's hooks
    # would not see it: its gradients are averaged across ranks explicitly instead.
    policy_ddp = wrap(policy, world)
    optimizer = torch.optim.AdamW(list(policy.parameters()) + list(value.parameters()), lr=cfg.learning_rate)
    state = load_training_state(out_dir, optimizer) if resume else TrainState(extra={"beta": cfg.kl_coef})
    beta = state.extra["beta"]
    kl_control = ppo.AdaptiveKLController(beta, cfg.target_kl) if cfg.target_kl else None

    weights_dir = Path(tempfile.mkdtemp(prefix="alignloop-ppo-weights-"))
    owns_sampler = sampler is None
    if cfg.rollout_engine == "vllm":
        unwrap(policy_ddp).save_pretrained(weights_dir, safe_serialization=True)
        tok.save_pretrained(weights_dir)
        if sampler is None:
            sampler = VLLMSampler(weights_dir, engine)
        else:
            sampler.update(weights_dir)
    else:
        sampler = TransformersSampler(policy, tok.pad_token_id, tok.eos_token_id)

    metrics: dict[str, float] = {}
    started = time.monotonic()
    samples = 0
    try:
        for iteration in range(state.step, cfg.iterations):
            rng = random.Random(cfg.seed * 7919 + iteration)  # everything random in an iteration derives from here
            batch_prompts = world.shard(rng.sample(prompts, min(cfg.rollout_batch, len(prompts))))
            p_ids = [prompt_ids(tok, p) for p in batch_prompts]
            responses = sampler.generate(p_ids, cfg.max_new_tokens, cfg.temperature,
                                         seed=cfg.seed * 1_000_003 + iteration * 1009 + world.rank)
            ids, attn, resp = pad_batch([p + r for p, r in zip(p_ids, responses)], tok.pad_token_id,
                                        loss_from=[len(p) for p in p_ids])
            mask = resp[:, 1:].float()  # positions whose *target* token is part of the response

            with torch.no_grad():
                old_logp = token_logprobs(policy(input_ids=ids, attention_mask=attn).logits, ids)
                ref_logp = token_logprobs(reference(input_ids=ids, attention_mask=attn).logits, ids)
                old_values = value.token_values(ids, attn)[:, :-1]
                scores = reward_model(ids, attn)
                rewards, kl = ppo.kl_penalized_rewards(old_logp, ref_logp, scores, mask, beta)
                advantages, returns = ppo.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
                advantages = ppo.whiten(advantages, mask)

            for _ in range(cfg.epochs):
                order = torch.randperm(len(p_ids), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
                for mb in order.split(cfg.minibatch):
                    n_mb = len(mb)
                    # One forward of the policy over the rollout minibatch and the pretraining batch
                    # together (DDP allows one forward per backward).
                    pt_ids, pt_attn, pt_mask = (pretraining_batch(tok, pretrain_texts, cfg.ptx_batch, rng)
                                                if cfg.ptx_coef else (None, None, None))
                    width = max(ids.shape[1], pt_ids.shape[1] if pt_ids is not None else 0)
                    all_ids = _pad_to(ids[mb], width, tok.pad_token_id)
                    all_attn = _pad_to(attn[mb], width, 0)
                    if pt_ids is not None:
                        all_ids = torch.cat([all_ids, _pad_to(pt_ids, width, tok.pad_token_id)])
                        all_attn = torch.cat([all_attn, _pad_to(pt_attn, width, 0)])
                    logits = policy_ddp(input_ids=all_ids, attention_mask=all_attn).logits
                    T = ids.shape[1]
                    logp = token_logprobs(logits[:n_mb, :T], ids[mb])
                    pg_loss, clipfrac = ppo.policy_loss(logp, old_logp[mb], advantages[mb], mask[mb], cfg.clip)
                    values = value.token_values(ids[mb], attn[mb])[:, :-1]
                    vf_loss = ppo.value_loss(values, old_values[mb], returns[mb], mask[mb], cfg.value_clip)
                    ptx = None
                    if pt_ids is not None:
                        ptx = lm_loss(logits[n_mb:, :pt_ids.shape[1]], pt_ids, pt_mask)
                    loss = ppo.ppo_ptx_loss(pg_loss, vf_loss, ptx, cfg.vf_coef, cfg.ptx_coef)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if world.size > 1:
                        for p in value.parameters():
                            if p.grad is not None:
                                torch.distributed.all_reduce(p.grad)
                                p.grad /= world.size
                    torch.nn.utils.clip_grad_norm_(list(policy.parameters()) + list(value.parameters()), 1.0)
                    optimizer.step()

            samples += len(p_ids) * world.size
            seq_kl = (kl.sum(dim=1)).mean().item()
            metrics = {
                "iteration": iteration + 1, "reward": world.mean(scores.mean().item()), "kl": world.mean(seq_kl),
                "beta": beta, "pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), "clipfrac": clipfrac.item(),
                "ptx_loss": ptx.item() if ptx is not None else float("nan"),
                "samples_per_s": samples / (time.monotonic() - started),
            }
            if world.main:
                log.info("ppo: iter %d/%d reward %.3f kl %.3f beta %.4f pg %.4f vf %.4f ptx %.4f clip %.3f (%.1f samples/s)",
                         iteration + 1, cfg.iterations, metrics["reward"], metrics["kl"], beta, metrics["pg_loss"],
                         metrics["vf_loss"], metrics["ptx_loss"], metrics["clipfrac"], metrics["samples_per_s"])
            if kl_control is not None:
                beta = kl_control.update(metrics["kl"], len(p_ids) * world.size)
            if cfg.rollout_engine == "vllm":
                if world.main:
                    unwrap(policy_ddp).save_pretrained(weights_dir, safe_serialization=True)
                if world.size > 1:
                    torch.distributed.barrier()
                sampler.update(weights_dir)
            state.step, state.extra["beta"] = iteration + 1, beta
            if cfg.save_every and state.step % cfg.save_every == 0 or state.step == cfg.iterations:
                _checkpoint(out_dir, policy, value, tok, optimizer, state, world)
    finally:
        if owns_sampler:
            sampler.close()
        shutil.rmtree(weights_dir, ignore_errors=True)
    return metrics


def _checkpoint(out_dir: Path, policy, value: RewardModel, tok, optimizer, state: TrainState, world: World) -> None:
    if world.main:
        policy.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        value.save_pretrained(out_dir / VALUE_DIR)
        save_training_state(out_dir, optimizer, state)
    if world.size > 1:
        torch.distributed.barrier()
