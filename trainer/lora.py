"""LoRA adapters (peft) on the models the stages train, and their weights merged for serving.

A version trained with LoRA is published merged: base weights + (B·A)·alpha/r, as an ordinary
checkpoint vLLM and transformers load; or (train.lora.publish = adapter) as the adapter alone, a
registry version on its base that the gateway serves from the base's engine. The adapter is kept
beside the merged weights (`adapter/`) so a run can resume and the next round can go on training it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from core.config import LoRAConfig
from registry.store import PolicyRegistry

ADAPTER_DIR = "adapter"
_PEFT_PREFIX = "base_model.model."


def attention_projections(model: torch.nn.Module) -> list[str]:
    """The names of the linear projections inside the model's attention blocks (q_proj, k_proj,
    v_proj, o_proj on Llama, Qwen2, Mistral, Gemma; query_key_value, dense on GPT-NeoX): LoRA's
    targets for any architecture transformers builds, found in the model rather than a table."""
    from transformers.pytorch_utils import Conv1D  # GPT-2's projections are Conv1D, not Linear

    names = {
        child_name
        for module in model.modules()
        if type(module).__name__.endswith("Attention")
        for child_name, child in module.named_children()
        if isinstance(child, torch.nn.Linear | Conv1D)
    }
    if not names:
        raise ValueError(
            f"no attention projections found in {type(model).__name__}: set train.lora.target_modules"
        )
    return sorted(names)


def add_adapter(model: torch.nn.Module, cfg: LoRAConfig, task_type: str) -> PeftModel:
    """The model with a fresh adapter (only the adapter trains; the base is frozen)."""
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules or attention_projections(model)),
        task_type=task_type,
    )
    return get_peft_model(model, config)


def load_adapter(model: torch.nn.Module, path: Path) -> PeftModel:
    """The model with a saved adapter, trainable."""
    return PeftModel.from_pretrained(model, path, is_trainable=True)


def is_lora(model: torch.nn.Module) -> bool:
    """Whether the model carries a peft adapter."""
    return isinstance(model, PeftModel)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model (the model itself without an adapter)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _adapted(state: dict[str, torch.Tensor]):
    """(plain key, base tensor, A, B or None) for every base-layer tensor of an adapted state dict."""
    for key, value in state.items():
        if ".base_layer." not in key:
            continue
        stem, leaf = key.split(".base_layer.")
        a = next((v for k, v in state.items() if k.startswith(f"{stem}.lora_A.") and k.endswith(leaf)), None)
        b = next((v for k, v in state.items() if k.startswith(f"{stem}.lora_B.") and k.endswith(leaf)), None)
        yield (
            f"{stem}.{leaf}",
            value,
            (a, b) if leaf == "weight" and a is not None and b is not None else None,
        )


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A plain model's state dict from an adapted one's: each adapted weight becomes
    W + (B·A)·scaling in float32 (the caller casts to the save dtype: a base held in bf16 and cast
    back before that would round the update away), and the adapter's own tensors go. Works on a
    gathered (FSDP) state dict too."""
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in state.items()}
    out = {k: v for k, v in state.items() if ".lora_" not in k and ".base_layer." not in k}
    for plain, value, adapter in _adapted(state):
        if adapter is not None:
            a, b = adapter
            value = value.float() + (b.float() @ a.float()) * scaling
        out[plain] = value
    return out


def update_lost(state: dict[str, torch.Tensor], scaling: float, dtype: torch.dtype) -> float:
    """How much of the adapter's update a merge published in `dtype` loses: |published − (W + ΔW)|
    over |ΔW|, summed over the adapted weights (0 in float32)."""
    state = {k.removeprefix(_PEFT_PREFIX): v for k, v in state.items()}
    lost = total = 0.0
    for _, value, adapter in _adapted(state):
        if adapter is None:
            continue
        delta = (adapter[1].float() @ adapter[0].float()) * scaling
        exact = value.float() + delta
        lost += float((exact.to(dtype).float() - exact).norm())
        total += float(delta.norm())
    return lost / total if total else 0.0


def scaling(cfg: LoRAConfig) -> float:
    """How much an adapter's product B·A adds to its weight (peft's alpha / r)."""
    return cfg.alpha / cfg.r


def merge_adapter(base: Path, adapter: Path, out: Path) -> Path:
    """Write `base` with `adapter` merged in to `out` as an ordinary checkpoint (safetensors)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype="auto"), adapter)
    staging = out.with_name(out.name + ".partial")
    model.merge_and_unload().save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(staging)
    staging.rename(out)  # complete or absent: a crash mid-write leaves no half checkpoint at `out`
    return out


def full_checkpoint(registry: PolicyRegistry, version: str, scratch: Path) -> Path:
    """A full-weight checkpoint of any registry version, for transformers: the version itself, or for
    an adapter version the merged checkpoint its round kept (merged anew under `scratch` if gone)."""
    info = registry.info(version)
    if info.base is None:
        return registry.path(version)
    kept = info.extra.get("merged")
    if kept and (Path(kept) / "config.json").is_file():
        return Path(kept)
    out = scratch / version
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        merge_adapter(registry.path(info.base), registry.path(version), out)
    return out
