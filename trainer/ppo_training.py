"""The PPO-ptx training loop (the math is in trainer/ppo.py, the models in trainer/ppo_models.py).

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

from core.config import EngineConfig, PPOConfig, TrainConfig
from trainer import lora, ppo
from trainer.checkpoint import TrainState, load_training_state, resumable, save_checkpoint
from trainer.data import pad_batch, pretraining_batch, prompt_ids
from trainer.distributed import unwrap
from trainer.lm import lm_loss, token_logprobs
from trainer.models import published_weights, save_adapter, save_policy
from trainer.optim import adamw, optimizer_step
from trainer.ppo_models import PPOModels, load_ppo_models
from trainer.rollout import Sampler, TransformersSampler, VLLMSampler
from trainer.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Experience:
    """One rollout batch and everything the update needs about it ([batch, T-1] unless noted)."""

    ids: torch.Tensor  # [batch, T] prompt + response tokens, right-padded
    attn: torch.Tensor  # [batch, T]
    mask: torch.Tensor  # 1 where the *target* token is part of the response
    old_logp: torch.Tensor  # log π_old of each target token
    old_values: torch.Tensor  # V_old before each target token
    scores: torch.Tensor  # [batch] the RM's score of each response
    kl: torch.Tensor  # per-token log π_old − log π_ref
    advantages: torch.Tensor  # whitened GAE advantages
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]


def rollout_prompts(prompts: list[str], batch: int, rng: random.Random) -> list[str]:
    """`batch` prompts for one rollout: a random subset, or, with fewer prompts than that, every
    prompt about equally often (several samples of one prompt are still distinct experience)."""
    if len(prompts) >= batch:
        return rng.sample(prompts, batch)
    order = rng.sample(prompts, len(prompts))
    return [order[i % len(order)] for i in range(batch)]


def _pad_to(ids: torch.Tensor, width: int, pad: int) -> torch.Tensor:
    return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad)


@torch.no_grad()
def rollout(
    models: PPOModels,
    sampler: Sampler,
    tok,
    prompts: list[str],
    cfg: PPOConfig,
    seed: int,
    beta: float,
    runtime: Runtime,
) -> Experience:
    """Sample a response to each prompt and compute rewards, advantages and returns."""
    p_ids = [prompt_ids(tok, p) for p in prompts]
    responses = sampler.generate(p_ids, cfg.max_new_tokens, cfg.temperature, seed=seed)
    ids, attn, resp = runtime.to(
        *pad_batch(
            [p + r for p, r in zip(p_ids, responses)], tok.pad_token_id, loss_from=[len(p) for p in p_ids]
        )
    )
    mask = resp[:, 1:].float()  # positions whose *target* token is part of the response
    with runtime.autocast():
        old_logp = token_logprobs(models.policy(input_ids=ids, attention_mask=attn).logits, ids)
        ref_logp = models.ref_logprobs(ids, attn)
        old_values = models.value(ids, attn, all_positions=True)[:, :-1]
        scores = models.scores(ids, attn)
    rewards, kl = ppo.kl_penalized_rewards(old_logp, ref_logp, scores, mask, beta)
    advantages, returns = ppo.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    return Experience(
        ids, attn, mask, old_logp, old_values, scores, kl, ppo.whiten(advantages, mask), returns
    )


def ptx_rng(seed: int, iteration: int, rank: int) -> random.Random:
    """The pretraining batches' randomness of one rank in one iteration: each rank draws its own
    batches (the same ones on every resume), so N ranks see N times the pretraining text."""
    return random.Random((seed * 7919 + iteration) * 65_537 + rank)


def update(
    models: PPOModels,
    exp: Experience,
    optimizer: torch.optim.Optimizer,
    tok,
    pretrain_texts: list[str],
    cfg: PPOConfig,
    rng: random.Random,
    runtime: Runtime,
    ptx_draws: random.Random,
) -> dict[str, float]:
    """PPO epochs over minibatches of exp (in rng's order), with pretraining batches drawn by
    `ptx_draws`; returns the last minibatch's losses."""
    pad = tok.pad_token_id
    for _ in range(cfg.epochs):
        order = torch.randperm(len(exp), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        for mb in order.split(cfg.minibatch):
            mb = mb.to(runtime.device)
            n_mb = len(mb)
            # One forward of the policy over the rollout minibatch and the pretraining batch
            # together (DDP allows one forward per backward).
            pt_ids, pt_attn, pt_mask = (
                runtime.to(*pretraining_batch(tok, pretrain_texts, cfg.ptx_batch, ptx_draws))
                if cfg.ptx_coef
                else (None, None, None)
            )
            width = max(exp.ids.shape[1], pt_ids.shape[1] if pt_ids is not None else 0)
            all_ids, all_attn = _pad_to(exp.ids[mb], width, pad), _pad_to(exp.attn[mb], width, 0)
            if pt_ids is not None:
                all_ids = torch.cat([all_ids, _pad_to(pt_ids, width, pad)])
                all_attn = torch.cat([all_attn, _pad_to(pt_attn, width, 0)])
            with runtime.autocast():
                logits = models.policy_train(input_ids=all_ids, attention_mask=all_attn).logits
                values = models.value_train(exp.ids[mb], exp.attn[mb], all_positions=True)[:, :-1]
            logp = token_logprobs(logits[:n_mb, : exp.ids.shape[1]], exp.ids[mb])
            pg_loss, clipfrac = ppo.policy_loss(
                logp, exp.old_logp[mb], exp.advantages[mb], exp.mask[mb], cfg.clip
            )
            vf_loss = ppo.value_loss(
                values, exp.old_values[mb], exp.returns[mb], exp.mask[mb], cfg.value_clip
            )
            ptx = lm_loss(logits[n_mb:, : pt_ids.shape[1]], pt_ids, pt_mask) if pt_ids is not None else None
            loss = ppo.ppo_ptx_loss(pg_loss, vf_loss, ptx, cfg.vf_coef, cfg.ptx_coef)
            optimizer_step(loss, optimizer, models.trainable())
    return {
        "pg_loss": pg_loss.item(),
        "vf_loss": vf_loss.item(),
        "clipfrac": clipfrac.item(),
        "ptx_loss": ptx.item() if ptx is not None else float("nan"),
    }


def _open_sampler(
    models: PPOModels,
    tok,
    cfg: PPOConfig,
    engine: EngineConfig,
    sampler: Sampler | None,
    weights_dir: Path,
    runtime: Runtime,
    base: Path,
) -> Sampler:
    if cfg.rollout_engine != "vllm":
        return TransformersSampler(models.policy, tok.pad_token_id, tok.eos_token_id, runtime.autocast)
    if sampler is None:
        if _adapter_rollouts(models, cfg):  # the engine holds the base; the adapter comes below
            sampler = VLLMSampler(base, engine, cfg.rollout_gpu_memory, lora_rank=runtime.lora.r)
        elif cfg.weight_sync == "memory":  # the engine starts on the base; the policy comes below
            sampler = VLLMSampler(base, engine, cfg.rollout_gpu_memory)
        else:
            save_policy(models.policy_train, tok, weights_dir, runtime, base)
            runtime.world.barrier()  # rank 0 wrote the weights every rank's engine starts on
            return VLLMSampler(weights_dir, engine, cfg.rollout_gpu_memory)
    _sync_rollouts(models, tok, cfg, sampler, weights_dir, runtime, base)
    return sampler


def _adapter_rollouts(models: PPOModels, cfg: PPOConfig) -> bool:
    return cfg.rollout_weights == "adapter" and lora.is_lora(unwrap(models.policy_train))


def _sync_rollouts(
    models: PPOModels, tok, cfg: PPOConfig, sampler, weights_dir: Path, runtime: Runtime, base: Path
) -> None:
    """Hand every rank's rollout engine the policy as trained now: the adapter alone (LoRA, through
    the folder rank 0 wrote it to); the merged weights in memory, each rank loading its own copy
    (weight_sync = memory); or the merged weights through a checkpoint rank 0 wrote."""
    if _adapter_rollouts(models, cfg):
        save_adapter(models.policy_train, weights_dir / lora.ADAPTER_DIR, runtime)
        runtime.world.barrier()
        sampler.update_adapter(weights_dir / lora.ADAPTER_DIR)
    elif cfg.weight_sync == "memory":
        sampler.update_weights(published_weights(models.policy_train, runtime, base, every_rank=True))
    else:
        save_policy(models.policy_train, tok, weights_dir, runtime, base)
        runtime.world.barrier()
        sampler.update(weights_dir)


def train_ppo(
    sft_dir: Path,
    rm_dir: Path,
    prompts: list[str],
    pretrain_texts: list[str],
    out_dir: Path,
    cfg: PPOConfig,
    runtime: Runtime | None = None,
    engine: EngineConfig | None = None,
    sampler: Sampler | None = None,
    init: Path | None = None,
    init_adapter: Path | None = None,
) -> dict[str, float]:
    """Optimise the SFT policy (or `init`; with LoRA, `init_adapter` on SFT) against the RM into
    out_dir (an HF checkpoint, LoRA merged; resumes if it holds a training state).

    With rollout_engine "vllm" a VLLMSampler is started on the policy (or `sampler`, already
    running on a checkpoint of the same architecture, is reused) and updated in place each
    iteration; "transformers" samples from the live policy."""
    out_dir, runtime = Path(out_dir), runtime or Runtime.resolve(TrainConfig())
    world = runtime.world
    resume = resumable(out_dir, runtime)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(sft_dir)
    base = init or sft_dir
    models = load_ppo_models(
        sft_dir, rm_dir, runtime, start=init, adapter=init_adapter, resume_from=out_dir if resume else None
    )
    optimizer = adamw(models.trainable(), cfg.learning_rate, runtime)
    state = load_training_state(out_dir, optimizer) if resume else TrainState(extra={"beta": cfg.kl_coef})
    kl_control = ppo.AdaptiveKLController(state.extra["beta"], cfg.target_kl) if cfg.target_kl else None
    if world.main:
        log.info(
            "ppo: %d iterations of %d prompts on %s", cfg.iterations, cfg.rollout_batch, runtime.describe()
        )

    weights_dir = world.agreed_path(lambda: tempfile.mkdtemp(prefix="alignloop-ppo-weights-"))
    owns_sampler = sampler is None
    sampler = _open_sampler(models, tok, cfg, engine or EngineConfig(), sampler, weights_dir, runtime, base)
    metrics: dict[str, float] = {}
    started, samples, tokens = time.monotonic(), 0, 0
    runtime.reset_peak_memory()
    try:
        for iteration in range(state.step, cfg.iterations):
            beta = state.extra["beta"]
            rng = random.Random(
                cfg.seed * 7919 + iteration
            )  # everything random in an iteration derives from here
            batch_prompts = world.shard(rollout_prompts(prompts, cfg.rollout_batch, rng))
            t0 = time.monotonic()
            exp = rollout(
                models,
                sampler,
                tok,
                batch_prompts,
                cfg,
                cfg.seed * 1_000_003 + iteration * 1009 + world.rank,
                beta,
                runtime,
            )
            t1 = time.monotonic()
            losses = update(
                models,
                exp,
                optimizer,
                tok,
                pretrain_texts,
                cfg,
                rng,
                runtime,
                ptx_rng(cfg.seed, iteration, world.rank),
            )
            t2 = time.monotonic()
            if cfg.rollout_engine == "vllm":
                _sync_rollouts(models, tok, cfg, sampler, weights_dir, runtime, base)
            samples += len(exp) * world.size
            tokens += int(exp.mask.sum()) * world.size
            elapsed = time.monotonic() - started
            metrics = {
                "iteration": iteration + 1,
                "reward": world.mean(exp.scores.mean().item()),
                "kl": world.mean(exp.kl.sum(dim=1).mean().item()),
                "beta": beta,
                **losses,
                "samples_per_s": samples / elapsed,
                "tokens_per_s": tokens / elapsed,
                "rollout_s": t1 - t0,
                "update_s": t2 - t1,
                "sync_s": time.monotonic() - t2,  # the trained weights into the rollout engine
                "peak_memory_gib": runtime.peak_memory_gib(),
            }
            if world.main:
                log.info(
                    "ppo: iter %d/%d reward %.3f kl %.3f beta %.4f pg %.4f vf %.4f ptx %.4f clip %.3f "
                    "(%.1f samples/s, %.0f response tokens/s, rollout %.1fs, update %.1fs, sync %.2fs, "
                    "peak memory %.2f GiB)",
                    iteration + 1,
                    cfg.iterations,
                    metrics["reward"],
                    metrics["kl"],
                    beta,
                    metrics["pg_loss"],
                    metrics["vf_loss"],
                    metrics["ptx_loss"],
                    metrics["clipfrac"],
                    metrics["samples_per_s"],
                    metrics["tokens_per_s"],
                    metrics["rollout_s"],
                    metrics["update_s"],
                    metrics["sync_s"],
                    metrics["peak_memory_gib"],
                )
            if kl_control is not None:
                state.extra["beta"] = kl_control.update(metrics["kl"], len(exp) * world.size)
            state.step = iteration + 1
            if (cfg.save_every and state.step % cfg.save_every == 0) or state.step == cfg.iterations:
                save_checkpoint(
                    out_dir, optimizer, state, lambda d: models.save(d, tok, runtime, base), runtime
                )
    finally:
        if owns_sampler:
            sampler.close()
        world.barrier()  # every rank's engine is done with the folder
        if world.main:
            shutil.rmtree(weights_dir, ignore_errors=True)
    return metrics
