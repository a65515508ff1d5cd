"""The PPO-ptx training loop (the math is in trainer/ppo.py).

Per iteration:
  1. rollout: sample responses to a batch of prompts; score them with the frozen RM; per-token
     KL-penalised rewards against the frozen SFT policy; GAE advantages and returns -> Experience
  2. update: PPO epochs over minibatches of the Experience, each adding γ · the LM loss on a
     pretraining batch
  3. push the new weights into the sampler; checkpoint every save_every iterations
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from core.config import EngineConfig, PPOConfig
from trainer import ppo
from trainer.checkpoint import TrainState, has_training_state, load_training_state, save_checkpoint
from trainer.data import pad_batch, pretraining_batch, prompt_ids
from trainer.distributed import World, unwrap, wrap
from trainer.lm import lm_loss, token_logprobs
from trainer.models import load_causal_lm
from trainer.optim import adamw, optimizer_step
from trainer.reward_model import RewardModel
from trainer.rollout import Sampler, TransformersSampler, VLLMSampler

log = logging.getLogger(__name__)
VALUE_DIR = "value"


@dataclass
class Experience:
    """One rollout batch and everything the update needs about it ([batch, T-1] unless noted)."""

    ids: torch.Tensor          # [batch, T] prompt + response tokens, right-padded
    attn: torch.Tensor         # [batch, T]
    mask: torch.Tensor         # 1 where the *target* token is part of the response
    old_logp: torch.Tensor     # log π_old of each target token
    old_values: torch.Tensor   # V_old before each target token
    scores: torch.Tensor       # [batch] the RM's score of each response
    kl: torch.Tensor           # per-token log π_old − log π_ref
    advantages: torch.Tensor   # whitened GAE advantages
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]


@dataclass
class PPOModels:
    """The four models of PPO: the policy (trained), the frozen SFT reference, the frozen reward
    model and the value model (trained, initialised from the RM)."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    reward_model: RewardModel
    value: RewardModel
    policy_ddp: torch.nn.Module  # the policy, wrapped for DDP when there are several ranks

    def trainable(self) -> list[torch.nn.Parameter]:
        """What the optimiser updates."""
        return [p for p in list(self.policy.parameters()) + list(self.value.parameters()) if p.requires_grad]


def _pad_to(ids: torch.Tensor, width: int, pad: int) -> torch.Tensor:
    return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad)


@torch.no_grad()
def rollout(models: PPOModels, sampler: Sampler, tok, prompts: list[str], cfg: PPOConfig, seed: int,
            beta: float) -> Experience:
    """Sample a response to each prompt and compute rewards, advantages and returns."""
    p_ids = [prompt_ids(tok, p) for p in prompts]
    responses = sampler.generate(p_ids, cfg.max_new_tokens, cfg.temperature, seed=seed)
    ids, attn, resp = pad_batch([p + r for p, r in zip(p_ids, responses)], tok.pad_token_id,
                                loss_from=[len(p) for p in p_ids])
    mask = resp[:, 1:].float()  # positions whose *target* token is part of the response
    old_logp = token_logprobs(models.policy(input_ids=ids, attention_mask=attn).logits, ids)
    ref_logp = token_logprobs(models.reference(input_ids=ids, attention_mask=attn).logits, ids)
    old_values = models.value.token_values(ids, attn)[:, :-1]
    scores = models.reward_model(ids, attn)
    rewards, kl = ppo.kl_penalized_rewards(old_logp, ref_logp, scores, mask, beta)
    advantages, returns = ppo.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    return Experience(ids, attn, mask, old_logp, old_values, scores, kl, ppo.whiten(advantages, mask), returns)


def update(models: PPOModels, exp: Experience, optimizer: torch.optim.Optimizer, tok, pretrain_texts: list[str],
           cfg: PPOConfig, world: World, rng: random.Random) -> dict[str, float]:
    """PPO epochs over minibatches of exp; returns the last minibatch's losses."""
    pad = tok.pad_token_id
    for _ in range(cfg.epochs):
        order = torch.randperm(len(exp), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        for mb in order.split(cfg.minibatch):
            n_mb = len(mb)
            # One forward of the policy over the rollout minibatch and the pretraining batch
            # together (DDP allows one forward per backward).
            pt_ids, pt_attn, pt_mask = (pretraining_batch(tok, pretrain_texts, cfg.ptx_batch, rng)
                                        if cfg.ptx_coef else (None, None, None))
            width = max(exp.ids.shape[1], pt_ids.shape[1] if pt_ids is not None else 0)
            all_ids, all_attn = _pad_to(exp.ids[mb], width, pad), _pad_to(exp.attn[mb], width, 0)
            if pt_ids is not None:
                all_ids = torch.cat([all_ids, _pad_to(pt_ids, width, pad)])
                all_attn = torch.cat([all_attn, _pad_to(pt_attn, width, 0)])
            logits = models.policy_ddp(input_ids=all_ids, attention_mask=all_attn).logits
            logp = token_logprobs(logits[:n_mb, :exp.ids.shape[1]], exp.ids[mb])
            pg_loss, clipfrac = ppo.policy_loss(logp, exp.old_logp[mb], exp.advantages[mb], exp.mask[mb], cfg.clip)
            values = models.value.token_values(exp.ids[mb], exp.attn[mb])[:, :-1]
            vf_loss = ppo.value_loss(values, exp.old_values[mb], exp.returns[mb], exp.mask[mb], cfg.value_clip)
            ptx = lm_loss(logits[n_mb:, :pt_ids.shape[1]], pt_ids, pt_mask) if pt_ids is not None else None
            loss = ppo.ppo_ptx_loss(pg_loss, vf_loss, ptx, cfg.vf_coef, cfg.ptx_coef)
            # The value model is called through a method (token_values), not forward(), so DDP's
            # hooks do not see it: its gradients are averaged across ranks explicitly.
            optimizer_step(loss, optimizer, models.trainable(), world, average=models.value.parameters())
    return {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(), "clipfrac": clipfrac.item(),
            "ptx_loss": ptx.item() if ptx is not None else float("nan")}


def _load_models(sft_dir: Path, rm_dir: Path, start: Path, value_from: Path, world: World) -> PPOModels:
    policy = load_causal_lm(start).train()
    reference = load_causal_lm(sft_dir).eval().requires_grad_(False)
    reward_model = RewardModel.from_pretrained(rm_dir).eval().requires_grad_(False)
    value = RewardModel.from_pretrained(value_from).train()  # value head from the RM
    return PPOModels(policy, reference, reward_model, value, wrap(policy, world))


def _open_sampler(models: PPOModels, tok, cfg: PPOConfig, engine: EngineConfig, sampler: Sampler | None,
                  weights_dir: Path) -> Sampler:
    if cfg.rollout_engine != "vllm":
        return TransformersSampler(models.policy, tok.pad_token_id, tok.eos_token_id)
    models.policy.save_pretrained(weights_dir, safe_serialization=True)
    tok.save_pretrained(weights_dir)
    if sampler is None:
        return VLLMSampler(weights_dir, engine)
    sampler.update(weights_dir)
    return sampler


def train_ppo(sft_dir: Path, rm_dir: Path, prompts: list[str], pretrain_texts: list[str], out_dir: Path,
              cfg: PPOConfig, world: World = World(), engine: EngineConfig = EngineConfig(),
              sampler: Sampler | None = None, init: Path | None = None) -> dict[str, float]:
    """Optimise the SFT policy (or `init`) against the RM into out_dir (HF checkpoint; resumes if it can).

    With rollout_engine "vllm" a VLLMSampler is started on the policy (or `sampler`, already
    running on a checkpoint of the same architecture, is reused) and updated in place each
    iteration; "transformers" samples from the live policy."""
    out_dir = Path(out_dir)
    resume = has_training_state(out_dir)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(sft_dir)
    models = _load_models(sft_dir, rm_dir, out_dir if resume else (init or sft_dir),
                          out_dir / VALUE_DIR if resume else rm_dir, world)
    optimizer = adamw(models.trainable(), cfg.learning_rate)
    state = load_training_state(out_dir, optimizer) if resume else TrainState(extra={"beta": cfg.kl_coef})
    kl_control = ppo.AdaptiveKLController(state.extra["beta"], cfg.target_kl) if cfg.target_kl else None

    def save(d: Path) -> None:
        models.policy.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
        models.value.save_pretrained(d / VALUE_DIR)

    weights_dir = Path(tempfile.mkdtemp(prefix="alignloop-ppo-weights-"))
    owns_sampler = sampler is None
    sampler = _open_sampler(models, tok, cfg, engine, sampler, weights_dir)
    metrics: dict[str, float] = {}
    started, samples = time.monotonic(), 0
    try:
        for iteration in range(state.step, cfg.iterations):
            beta = state.extra["beta"]
            rng = random.Random(cfg.seed * 7919 + iteration)  # everything random in an iteration derives from here
            batch_prompts = world.shard(rng.sample(prompts, min(cfg.rollout_batch, len(prompts))))
            exp = rollout(models, sampler, tok, batch_prompts, cfg, cfg.seed * 1_000_003 + iteration * 1009 + world.rank,
                          beta)
            losses = update(models, exp, optimizer, tok, pretrain_texts, cfg, world, rng)
            samples += len(exp) * world.size
            metrics = {"iteration": iteration + 1, "reward": world.mean(exp.scores.mean().item()),
                       "kl": world.mean(exp.kl.sum(dim=1).mean().item()), "beta": beta, **losses,
                       "samples_per_s": samples / (time.monotonic() - started)}
            if world.main:
                log.info("ppo: iter %d/%d reward %.3f kl %.3f beta %.4f pg %.4f vf %.4f ptx %.4f clip %.3f (%.1f samples/s)",
                         iteration + 1, cfg.iterations, metrics["reward"], metrics["kl"], beta, metrics["pg_loss"],
                         metrics["vf_loss"], metrics["ptx_loss"], metrics["clipfrac"], metrics["samples_per_s"])
            if kl_control is not None:
                state.extra["beta"] = kl_control.update(metrics["kl"], len(exp) * world.size)
            if cfg.rollout_engine == "vllm":
                if world.main:
                    unwrap(models.policy_ddp).save_pretrained(weights_dir, safe_serialization=True)
                if world.size > 1:
                    torch.distributed.barrier()
                sampler.update(weights_dir)
            state.step = iteration + 1
            if cfg.save_every and state.step % cfg.save_every == 0 or state.step == cfg.iterations:
                save_checkpoint(out_dir, optimizer, state, save, world)
    finally:
        if owns_sampler:
            sampler.close()
        shutil.rmtree(weights_dir, ignore_errors=True)
    return metrics
