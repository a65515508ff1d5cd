"""Training the reward model on K-wise rankings, and measuring it (held-out pairwise accuracy)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from core.config import RMConfig, TrainConfig
from feedback.events import ranking_pairs
from trainer import supervised_loop as loop
from trainer.checkpoint import resumable, save_checkpoint
from trainer.data import Ranking, encode_responses, held_out
from trainer.distributed import full_state_dict, unwrap, wrap
from trainer.evaluate import score
from trainer.lora import scaling
from trainer.models import save_dtype
from trainer.optim import adamw, apply_gradients
from trainer.reward_model import RewardModel, kwise_loss
from trainer.runtime import Runtime

log = logging.getLogger(__name__)


def split(rankings: list[Ranking], eval_fraction: float) -> tuple[list[Ranking], list[Ranking]]:
    """(train, held-out), held out by prompt (trainer/data.py's rule) so no prompt is on both sides."""
    held = [held_out(r.prompt, eval_fraction) for r in rankings]
    return [r for r, h in zip(rankings, held) if not h], [r for r, h in zip(rankings, held) if h]


def pair_margins(
    model: RewardModel, tok, rankings: list[Ranking], max_len: int = 256, runtime: Runtime | None = None
) -> torch.Tensor:
    """r(better) - r(worse) for every pair the rankings order (> 0 where the model agrees)."""
    margins: list[float] = []
    for r in rankings:
        rewards = score(model, tok, [r.prompt] * len(r.responses), r.responses, max_len, runtime=runtime)
        margins += [float(rewards[better] - rewards[worse]) for better, worse in ranking_pairs(r.ranking)]
    return torch.tensor(margins)


def pairwise_accuracy(
    model: RewardModel, tok, rankings: list[Ranking], max_len: int = 256, runtime: Runtime | None = None
) -> float:
    """The fraction of the held-out rankings' pairs that the model orders as the ranking does."""
    return accuracy(pair_margins(model, tok, rankings, max_len, runtime))


def accuracy(margins: torch.Tensor) -> float:
    """The fraction of pairs ordered right, from their margins (0 without pairs)."""
    return float((margins > 0).float().mean()) if len(margins) else 0.0


def micro_batches(batch: list[Ranking], max_sequences: int | None) -> list[list[Ranking]]:
    """The step's rankings in order, in parts of at most max_sequences responses (a ranking is never
    split: its loss needs all K rewards; one longer than that is a part of its own); None: one part."""
    if max_sequences is None:
        return [batch]
    parts: list[list[Ranking]] = [[]]
    for r in batch:
        if parts[-1] and sum(len(x.responses) for x in parts[-1]) + len(r.responses) > max_sequences:
            parts.append([])
        parts[-1].append(r)
    return parts


def _load(init: Path, out_dir: Path, runtime: Runtime) -> RewardModel:
    resume = resumable(out_dir, runtime)
    if resume and runtime.lora.enabled:  # the adapter trained so far on init's backbone, and its head
        model = RewardModel.from_pretrained(init, runtime)
        model.load_adapter(out_dir)
    else:
        model = RewardModel.from_pretrained(out_dir if resume else init, runtime)
        if runtime.lora.enabled:
            model.add_adapter(runtime.lora)
    if runtime.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def train_rm(
    init: Path,
    rankings: list[Ranking],
    out_dir: Path,
    cfg: RMConfig,
    runtime: Runtime | None = None,
    reference: list[tuple[str, str]] | None = None,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train a reward model from init (an SFT policy or an earlier RM) into out_dir.

    Each step takes batch_size rankings; all responses of a ranking are forwarded once and its
    pairs form one loss term. `reference` (prompt, response) pairs set the offset so that they
    score 0 on average. Returns held-out metrics."""
    out_dir, runtime = Path(out_dir), runtime or Runtime.resolve(TrainConfig())
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(init)
    train, held = split(rankings, cfg.eval_fraction)
    model = _load(init, out_dir, runtime)
    ddp = wrap(model, runtime.world, runtime.sharding, runtime.precision)
    optimizer = adamw(model.parameters(), cfg.learning_rate, runtime)

    def step(indices: list[int]) -> dict[str, float]:
        batch = [train[i] for i in indices]
        parts = micro_batches(batch, cfg.micro_batch_sequences)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens = 0.0, 0
        for i, part in enumerate(parts):
            prompts = [r.prompt for r in part for _ in r.responses]
            responses = [y for r in part for y in r.responses]
            ids, attn = runtime.to(*encode_responses(tok, prompts, responses, cfg.max_len))
            # DDP reduces the gradients once, with the last micro-batch's backward.
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last or not hasattr(ddp, "no_sync") else ddp.no_sync():
                with runtime.autocast():
                    rewards = ddp(ids, attn)
                losses, start = [], 0
                for r in part:
                    losses.append(kwise_loss(rewards[start : start + len(r.responses)], r.ranking))
                    start += len(r.responses)
                loss = torch.stack(losses).sum() / len(batch)  # the step's mean over rankings, in parts
                loss.backward()
            loss_sum, tokens = loss_sum + loss.item(), tokens + int(attn.sum())
        apply_gradients(optimizer, list(model.parameters()))
        return {"loss": runtime.world.mean(loss_sum), "tokens": tokens}

    def save(d: Path) -> None:
        state = full_state_dict(ddp)
        if runtime.world.main:
            unwrap(ddp).save_pretrained(d, state, save_dtype(runtime, init), scaling(runtime.lora))
            tok.save_pretrained(d)

    state, train_seconds = loop.run(
        name="rm",
        n_items=len(train),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        seed=cfg.seed,
        optimizer=optimizer,
        step=step,
        save=save,
        out_dir=out_dir,
        runtime=runtime,
        save_every=cfg.save_every,
        max_steps=max_steps,
        lengths=[len(r.prompt) + max(map(len, r.responses)) for r in train],
    )
    model.eval()
    if reference:
        with torch.no_grad(), runtime.autocast():
            offset = score(
                model, tok, [p for p, _ in reference], [y for _, y in reference], cfg.max_len, runtime=runtime
            ).mean()
        model.offset += offset
        save_checkpoint(out_dir, optimizer, state, save, runtime)
    metrics = {
        "heldout_accuracy": pairwise_accuracy(model, tok, held, cfg.max_len, runtime)
        if held
        else float("nan"),
        "heldout_rankings": len(held),
        "train_rankings": len(train),
        "steps": state.step,
        "comparisons": sum(len(ranking_pairs(r.ranking)) for r in train),
        "train_seconds": train_seconds,
        "peak_memory_gib": runtime.peak_memory_gib(),
    }
    log.info("rm: held-out pairwise accuracy %.3f on %d rankings", metrics["heldout_accuracy"], len(held))
    return metrics
