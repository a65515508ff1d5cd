"""Loading the models a training stage works on (safetensors checkpoints only), placing them on
the runtime's device in the runtime's precision, and saving what a stage produces."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from trainer import lora
from trainer.distributed import full_state_dict, unwrap
from trainer.runtime import DTYPES, Runtime

log = logging.getLogger(__name__)


def load_causal_lm(path: Path, runtime: Runtime | None = None, *, frozen: bool = False) -> torch.nn.Module:
    """A causal LM (a policy) from a checkpoint: fp32 to train (the optimiser's copy), or in the
    runtime's compute dtype, frozen, when it only runs forward."""
    runtime = runtime or Runtime()
    dtype = runtime.frozen_dtype if frozen else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype).to(runtime.device)
    if frozen:
        model.eval().requires_grad_(False)
    return model


def trainable_policy(path: Path, runtime: Runtime, adapter: Path | None = None) -> torch.nn.Module:
    """A policy to train from the checkpoint at path: all weights, or (runtime.lora) the frozen base
    with an adapter, fresh or loaded from `adapter`."""
    model = load_causal_lm(path, runtime, frozen=runtime.lora.enabled)  # a LoRA base is frozen: compute dtype
    if runtime.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if runtime.lora.enabled:
        model = (
            lora.load_adapter(model, adapter)
            if adapter
            else lora.add_adapter(model, runtime.lora, "CAUSAL_LM")
        )
    return model.train()


def checkpoint_dtype(path: Path) -> torch.dtype:
    """The dtype a checkpoint's config says its weights are in (float32 if it does not say)."""
    config = json.loads((Path(path) / "config.json").read_text())
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return getattr(torch, name, torch.float32)


def save_dtype(runtime: Runtime, base: Path) -> torch.dtype:
    """The dtype to save in: as configured, or (auto) the base checkpoint's own."""
    return checkpoint_dtype(base) if runtime.save_dtype == "auto" else DTYPES[runtime.save_dtype]


def published_weights(
    model: torch.nn.Module, runtime: Runtime, base: Path, *, every_rank: bool = False
) -> dict[str, torch.Tensor]:
    """The policy's weights as published, on the CPU: LoRA merged in float32, then all in the save
    dtype. A collective under FSDP: every rank calls it; only rank 0 gets them unless every_rank."""
    model = unwrap(model)
    return _as_published(full_state_dict(model, every_rank=every_rank), lora.is_lora(model), runtime, base)


def _as_published(
    state: dict[str, torch.Tensor], adapted: bool, runtime: Runtime, base: Path
) -> dict[str, torch.Tensor]:
    dtype = save_dtype(runtime, base)
    if adapted and state:
        if dtype != torch.float32 and runtime.world.main:
            log.info(
                "lora: the merged policy is published in %s, which keeps the adapter's update to within "
                "%.1f%% (train.save_dtype=fp32 keeps all of it)",
                str(dtype).removeprefix("torch."),
                100 * lora.update_lost(state, lora.scaling(runtime.lora), dtype),
            )
        state = lora.merged_state_dict(state, lora.scaling(runtime.lora))
    return {k: v.to(dtype) for k, v in state.items()}


def save_policy(
    model: torch.nn.Module, tok: PreTrainedTokenizerBase, out_dir: Path, runtime: Runtime, base: Path
) -> None:
    """The policy as an ordinary HF checkpoint (LoRA merged in) in the save dtype, plus the adapter
    (for resuming) when it has one. A collective under FSDP: every rank calls it, rank 0 writes."""
    model = unwrap(model)
    state = full_state_dict(model)
    if not runtime.world.main:
        return
    if lora.is_lora(model):
        model.save_pretrained(Path(out_dir) / lora.ADAPTER_DIR, state_dict=state)
    weights = _as_published(state, lora.is_lora(model), runtime, base)
    lora.base_model(model).save_pretrained(out_dir, state_dict=weights, safe_serialization=True)
    _mark_dtype(Path(out_dir) / "config.json", save_dtype(runtime, base))
    tok.save_pretrained(out_dir)


def save_adapter(model: torch.nn.Module, out_dir: Path, runtime: Runtime) -> None:
    """Only the policy's LoRA adapter (what a rollout engine on the base needs). A collective under
    FSDP, like save_policy."""
    model = unwrap(model)
    state = full_state_dict(model)
    if runtime.world.main:
        model.save_pretrained(out_dir, state_dict=state)


def _mark_dtype(config_file: Path, dtype: torch.dtype) -> None:
    # save_pretrained writes the dtype the model was loaded in; the file holds `dtype`.
    config = json.loads(config_file.read_text())
    name = str(dtype).removeprefix("torch.")
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = name
    config.setdefault("dtype", name)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
