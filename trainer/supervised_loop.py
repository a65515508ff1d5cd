"""The supervised training loop SFT and the reward model share: seeded epochs (length-bucketed),
rank sharding, progress logs with rates and peak memory, and resumable checkpoints (PPO has a loop
of its own, trainer/ppo_training.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.checkpoint import TrainState, has_training_state, load_training_state, save_checkpoint
from trainer.runtime import Runtime

log = logging.getLogger(__name__)
_BUCKET_BATCHES = 50  # batches per length bucket: sorted within, shuffled across


def epoch_order(
    n: int, seed: int, epoch: int, lengths: list[int] | None = None, per_step: int = 1
) -> list[int]:
    """The data order of one epoch: a function of (seed, epoch) alone, so a resume can recompute it.

    With lengths, consecutive runs of per_step items have similar lengths (less padding): the
    shuffled order is cut into buckets of _BUCKET_BATCHES batches, each sorted by length, and
    the batches are shuffled again so that long and short ones alternate."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen).tolist()
    if lengths is None or per_step <= 1:
        return order
    bucket = per_step * _BUCKET_BATCHES
    batches = []
    for start in range(0, n, bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + per_step] for i in range(0, len(chunk), per_step)]
    full = [b for b in batches if len(b) == per_step]
    rest = [i for b in batches if len(b) < per_step for i in b]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()]
    return [i for b in shuffled for i in b] + rest


def run(
    *,
    name: str,
    n_items: int,
    batch_size: int,
    epochs: int,
    seed: int,
    optimizer: torch.optim.Optimizer,
    step: Callable[[list[int]], dict[str, float]],
    save: Callable[[Path], None],
    out_dir: Path,
    runtime: Runtime,
    save_every: int,
    max_steps: int | None = None,
    lengths: list[int] | None = None,
) -> tuple[TrainState, float]:
    """Train until `epochs` passes (or max_steps steps); resumes from out_dir if it holds a state.

    `step(indices)` does one optimisation step on those items and returns metrics to log (a
    "tokens" entry is counted into tokens/s); `save(dir)` writes the model. Each step consumes
    batch_size * world.size items; `lengths` (per item) turns on length bucketing. Returns the
    final state and the seconds spent in steps (checkpoints not counted)."""
    world = runtime.world
    state = TrainState()
    if has_training_state(out_dir):
        state = load_training_state(out_dir, optimizer)
        log.info("%s: resuming at step %d (epoch %d, item %d)", name, state.step, state.epoch, state.position)
    per_step = batch_size * world.size
    if n_items < per_step:
        # Fewer items than one batch (a round's few rankings of K = 9): one smaller step per epoch,
        # of as many as the ranks can share evenly; none if they cannot share any.
        per_step = n_items - n_items % world.size
        if world.main:
            log.warning(
                "%s: %d items, fewer than a batch of %d: steps of %d", name, n_items, batch_size, per_step
            )
    steps_per_epoch = n_items // per_step if per_step else 0
    total = min(epochs * steps_per_epoch, max_steps) if max_steps else epochs * steps_per_epoch
    if world.main:
        log.info("%s: %d steps of %d items on %s", name, total, per_step, runtime.describe())
    runtime.reset_peak_memory()
    started, done_here, tokens, in_steps = time.monotonic(), 0, 0, 0.0
    while state.step < total:
        order = epoch_order(
            n_items, seed, state.epoch, lengths if runtime.length_bucketing else None, per_step
        )
        while state.position + per_step <= n_items and state.step < total:
            t = time.perf_counter()
            metrics = step(world.shard(order[state.position : state.position + per_step]))
            in_steps += time.perf_counter() - t
            tokens += int(metrics.pop("tokens", 0))
            state.position += per_step
            state.step += 1
            done_here += 1
            if world.main and (state.step % 10 == 0 or state.step == total):
                elapsed = time.monotonic() - started
                shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                log.info(
                    "%s: step %d/%d %s (%.2f steps/s, %.1f items/s, %.0f tokens/s, peak memory %.2f GiB)",
                    name,
                    state.step,
                    total,
                    shown,
                    done_here / elapsed,
                    done_here * per_step / elapsed,
                    tokens * world.size / elapsed,
                    runtime.peak_memory_gib(),
                )
            if save_every and state.step % save_every == 0 and state.step < total:
                save_checkpoint(out_dir, optimizer, state, save, runtime)
        if state.position + per_step > n_items:
            state.epoch += 1
            state.position = 0
    save_checkpoint(out_dir, optimizer, state, save, runtime)
    return state, in_steps
