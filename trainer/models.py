"""Loading the models the training stages work on, from safetensors checkpoints only."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def load_causal_lm(path: Path) -> AutoModelForCausalLM:
    """A causal LM (a policy) from a safetensors checkpoint, in float32 for training."""
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
