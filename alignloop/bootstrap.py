"""What a fresh state directory needs before anything serves or trains: a base policy in the
registry and, for the tiny default model, the pretraining text PPO-ptx mixes in."""

from __future__ import annotations

import logging
from pathlib import Path

from core.config import Settings
from registry.bootstrap import ensure_base_policy as ensure_in_registry
from registry.store import PolicyRegistry
from trainer.data import write_jsonl

log = logging.getLogger("alignloop")


def ensure_base_policy(settings: Settings) -> str:
    """The registry's current version; on first use v0001 is the configured base model or, with
    none configured, the tiny model built here (its pretraining text is written beside it)."""
    paths = settings.paths
    paths.root.mkdir(parents=True, exist_ok=True)

    def build_tiny(out: Path) -> dict:
        from synthetic.corpus import pretraining_texts
        from synthetic.tiny_model import build_tiny_model

        log.info("registry is empty: building the tiny base model (one-time, about a minute on 2 cores)")
        build_tiny_model(out, settings.tiny_model)
        write_jsonl(
            paths.pretraining_data,
            ({"text": t} for t in pretraining_texts(2048, seed=settings.tiny_model.seed)),
        )
        return {"source": "tiny-model", "tiny_model": settings.tiny_model.model_dump()}

    return ensure_in_registry(
        PolicyRegistry(paths.registry), settings.base_model, build_tiny, hub_cache=paths.hub_cache
    )
