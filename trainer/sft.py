"""Supervised fine-tuning on demonstrations: next-token loss on the response tokens only."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from core.config import SFTConfig
from trainer import supervised_loop as loop
from trainer.checkpoint import has_training_state
from trainer.data import encode_pairs
from trainer.distributed import World, unwrap, wrap
from trainer.optim import adamw, optimizer_step
from trainer.lm import lm_loss
from trainer.models import load_causal_lm

log = logging.getLogger(__name__)


def train_sft(base: Path, demos: list[tuple[str, str]], out_dir: Path, cfg: SFTConfig, world: World = World(),
              max_steps: int | None = None) -> Path:
    """Fine-tune base on (prompt, response) pairs into out_dir (resuming if it holds a state)."""
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = load_causal_lm(out_dir if has_training_state(out_dir) else base).train()
    ddp = wrap(model, world)
    optimizer = adamw(model.parameters(), cfg.learning_rate)

    def step(indices: list[int]) -> dict[str, float]:
        ids, attn, loss_mask = encode_pairs(tok, [demos[i][0] for i in indices], [demos[i][1] for i in indices],
                                            cfg.max_len)
        loss = lm_loss(ddp(input_ids=ids, attention_mask=attn).logits, ids, loss_mask)
        optimizer_step(loss, optimizer, list(model.parameters()), world)
        return {"loss": world.mean(loss.item())}

    def save(d: Path) -> None:
        unwrap(ddp).save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)

    loop.run(name="sft", n_items=len(demos), batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed,
             optimizer=optimizer, step=step, save=save, out_dir=out_dir, world=world, save_every=cfg.save_every,
             max_steps=max_steps)
    return out_dir
