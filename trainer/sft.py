"""Supervised fine-tuning on demonstrations: next-token loss on the response tokens only."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from core.config import SFTConfig, TrainConfig
from trainer import supervised_loop as loop
from trainer.checkpoint import resumable
from trainer.data import encode_pairs
from trainer.distributed import wrap
from trainer.lm import lm_loss
from trainer.lora import ADAPTER_DIR
from trainer.models import save_policy, trainable_policy
from trainer.optim import adamw, optimizer_step
from trainer.runtime import Runtime

log = logging.getLogger(__name__)


def train_sft(
    base: Path,
    demos: list[tuple[str, str]],
    out_dir: Path,
    cfg: SFTConfig,
    runtime: Runtime | None = None,
    max_steps: int | None = None,
) -> Path:
    """Fine-tune base on (prompt, response) pairs into out_dir (resuming if it holds a state)."""
    out_dir, runtime = Path(out_dir), runtime or Runtime.resolve(TrainConfig())
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(base)
    resume = resumable(out_dir, runtime)
    if resume and runtime.lora.enabled:  # the adapter trained so far, on the same base
        model = trainable_policy(base, runtime, adapter=out_dir / ADAPTER_DIR)
    else:
        model = trainable_policy(out_dir if resume else base, runtime)
    ddp = wrap(model, runtime.world, runtime.sharding, runtime.precision)
    optimizer = adamw(model.parameters(), cfg.learning_rate, runtime)

    def step(indices: list[int]) -> dict[str, float]:
        ids, attn, loss_mask = runtime.to(
            *encode_pairs(tok, [demos[i][0] for i in indices], [demos[i][1] for i in indices], cfg.max_len)
        )
        with runtime.autocast():
            loss = lm_loss(ddp(input_ids=ids, attention_mask=attn).logits, ids, loss_mask)
        optimizer_step(loss, optimizer, list(model.parameters()))
        return {"loss": runtime.world.mean(loss.item()), "tokens": int(attn.sum())}

    loop.run(
        name="sft",
        n_items=len(demos),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        seed=cfg.seed,
        optimizer=optimizer,
        step=step,
        save=lambda d: save_policy(ddp, tok, d, runtime, base),
        out_dir=out_dir,
        runtime=runtime,
        save_every=cfg.save_every,
        max_steps=max_steps,
        lengths=[len(p) + len(r) for p, r in demos],
    )
    return out_dir
