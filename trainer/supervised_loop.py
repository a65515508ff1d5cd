"""The supervised training loop SFT and the reward model share: seeded epochs, rank sharding,
progress logs with rates, and resumable checkpoints (PPO has a loop of its own, trainer/ppo_training.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.checkpoint import TrainState, has_training_state, load_training_state, save_checkpoint
from trainer.distributed import World

log = logging.getLogger(__name__)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a function of (seed, epoch) alone, so a resume can recompute it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def run(*, name: str, n_items: int, batch_size: int, epochs: int, seed: int, optimizer: torch.optim.Optimizer,
        step: Callable[[list[int]], dict[str, float]], save: Callable[[Path], None], out_dir: Path,
        world: World, save_every: int, max_steps: int | None = None) -> TrainState:
    """Train until `epochs` passes (or max_steps steps); resumes from out_dir if it holds a state.

    `step(indices)` does one optimisation step on those items and returns metrics to log;
    `save(dir)` writes the model. Each step consumes batch_size * world.size items."""
    state = TrainState()
    if has_training_state(out_dir):
        state = load_training_state(out_dir, optimizer)
        log.info("%s: resuming at step %d (epoch %d, item %d)", name, state.step, state.epoch, state.position)
    per_step = batch_size * world.size
    steps_per_epoch = max(1, n_items // per_step)
    total = min(epochs * steps_per_epoch, max_steps) if max_steps else epochs * steps_per_epoch
    started, done_here = time.monotonic(), 0
    while state.step < total:
        order = epoch_order(n_items, seed, state.epoch)
        while state.position + per_step <= n_items and state.step < total:
            indices = world.shard(order[state.position:state.position + per_step])
            metrics = step(indices)
            state.position += per_step
            state.step += 1
            done_here += 1
            if world.main and (state.step % 10 == 0 or state.step == total):
                rate = done_here / (time.monotonic() - started)
                shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                log.info("%s: step %d/%d %s (%.2f steps/s, %.1f items/s)", name, state.step, total, shown, rate,
                         rate * per_step)
            if save_every and state.step % save_every == 0 and state.step < total:
                save_checkpoint(out_dir, optimizer, state, save, world)
        if state.position + per_step > n_items:
            state.epoch += 1
            state.position = 0
    save_checkpoint(out_dir, optimizer, state, save, world)
    return state
