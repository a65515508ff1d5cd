"""The reward model: the policy's architecture with a scalar head, and its K-wise ranking loss.

A prompt's ranking of K responses is ONE training element: each response is forwarded once and

    loss = −1/C · Σ_{(w, l) ordered pairs} log σ(r(x, y_w) − r(x, y_l))

where C is the number of ordered pairs (C(K,2) without ties; tied responses form no pair).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from core.config import LoRAConfig
from core.durable_files import write_atomic
from feedback.events import ranking_pairs
from trainer import lora
from trainer.runtime import Runtime

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


def kwise_loss(rewards: torch.Tensor, ranking: list[list[int]]) -> torch.Tensor:
    """The loss of one ranking element, given the K rewards of its responses."""
    pairs = ranking_pairs(ranking)
    if not pairs:  # everything tied: no signal
        return rewards.sum() * 0.0
    better = torch.tensor([p[0] for p in pairs], device=rewards.device)
    worse = torch.tensor([p[1] for p in pairs], device=rewards.device)
    return -F.logsigmoid(rewards[better] - rewards[worse]).mean()


class RewardModel(nn.Module):
    """r_θ(x, y): a transformer backbone and a linear head read at the last real token."""

    def __init__(self, backbone: nn.Module, bias: float = 0.0):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1, device=backbone.device)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        # Normalisation offset so that reference responses score 0 on average (the paper's bias).
        self.register_buffer("offset", torch.tensor(float(bias), device=backbone.device))

    @property
    def config(self):
        return self.backbone.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_positions: bool = False
    ) -> torch.Tensor:
        """One score per sequence, read at its last non-padding token (right padding); or, with
        all_positions, the head at every position ([batch, seq]: what the value function uses)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        values = self.head(hidden).squeeze(-1).float() - self.offset.float()
        if all_positions:
            return values
        last = attention_mask.long().sum(dim=1) - 1
        return values[torch.arange(values.shape[0], device=values.device), last]

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head at every position: [batch, seq]."""
        return self(input_ids, attention_mask, all_positions=True)

    def add_adapter(self, cfg: LoRAConfig) -> None:
        """Train an adapter on the backbone (frozen) instead of all of it; the head trains in full."""
        self.backbone = lora.add_adapter(self.backbone, cfg, "FEATURE_EXTRACTION")

    def load_adapter(self, path: Path) -> None:
        """Go on training the adapter, head and offset saved at path (by save_pretrained)."""
        self.backbone = lora.load_adapter(self.backbone, Path(path) / lora.ADAPTER_DIR)
        self._load_head(Path(path))

    @classmethod
    def with_shared_backbone(
        cls, reward_model: RewardModel, cfg: LoRAConfig, resume: Path | None = None
    ) -> RewardModel:
        """A value model that is an adapter on reward_model's frozen backbone, with a head of its own
        initialised from the reward model's (or both resumed from `resume`). The reward model scores
        with the adapter disabled."""
        if resume is not None:
            reward_model.backbone = lora.load_adapter(reward_model.backbone, resume / lora.ADAPTER_DIR)
        else:
            reward_model.backbone = lora.add_adapter(reward_model.backbone, cfg, "FEATURE_EXTRACTION")
        value = cls(reward_model.backbone)
        value.head.load_state_dict({k: v.float() for k, v in reward_model.head.state_dict().items()})
        value.offset.copy_(reward_model.offset)
        if resume is not None:
            value._load_head(resume)
        return value

    def _load_head(self, path: Path) -> None:
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
        scale = meta.get("scale", 1.0)
        if (path / HEAD_FILE).exists():
            head = load_file(path / HEAD_FILE)
            self.head.load_state_dict({"weight": head["weight"] * scale, "bias": head["bias"] * scale})
        if meta:
            self.offset.fill_(meta["offset"] * scale)

    @classmethod
    def from_pretrained(
        cls, path: Path, runtime: Runtime | None = None, *, frozen: bool = False
    ) -> RewardModel:
        """Load a saved reward model, or start one from a causal-LM checkpoint (fresh head): fp32 to
        train, or frozen in the runtime's compute dtype."""
        path, runtime = Path(path), runtime or Runtime()
        dtype = runtime.frozen_dtype if frozen else torch.float32
        backbone = AutoModel.from_pretrained(path, use_safetensors=True, dtype=dtype).to(runtime.device)
        model = cls(backbone)
        model._load_head(path)
        model.head.to(dtype)
        if frozen:
            model.eval().requires_grad_(False)
        return model

    def save_adapter(self, path: Path) -> None:
        """Only the adapter, head and offset (a value model on a shared backbone)."""
        path = Path(path)
        self.backbone.save_pretrained(path / lora.ADAPTER_DIR)
        save_file(
            {k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()},
            path / HEAD_FILE,
        )
        write_atomic(path / META_FILE, json.dumps({"offset": float(self.offset)}))

    @staticmethod
    def scale_saved(path: Path, factor: float) -> None:
        """Multiply the saved model's every reward by factor (head and offset alike, applied on load)."""
        # One file rewritten whole: a crash leaves the old scale or the new one, never half of a change.
        meta = json.loads((Path(path) / META_FILE).read_text())
        write_atomic(Path(path) / META_FILE, json.dumps({**meta, "scale": meta.get("scale", 1.0) * factor}))

    def save_pretrained(
        self,
        path: Path,
        state: dict[str, torch.Tensor] | None = None,
        dtype: torch.dtype | None = None,
        lora_scaling: float = 1.0,
    ) -> None:
        """Backbone in HF format (any adapter merged in), head and offset beside it; safetensors only.
        `state` is a gathered state dict of this model (FSDP); by default its own."""
        path = Path(path)
        state = state if state is not None else {k: v.detach().cpu() for k, v in self.state_dict().items()}
        backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        dtype = dtype or next(v.dtype for k, v in backbone.items() if ".lora_" not in k)  # the base's own
        if lora.is_lora(self.backbone):
            self.backbone.save_pretrained(path / lora.ADAPTER_DIR, state_dict=backbone)
            backbone = lora.merged_state_dict(backbone, lora_scaling)
        lora.base_model(self.backbone).save_pretrained(
            path, state_dict={k: v.to(dtype) for k, v in backbone.items()}, safe_serialization=True
        )
        save_file({k: state[f"head.{k}"].float().contiguous() for k in ("weight", "bias")}, path / HEAD_FILE)
        write_atomic(path / META_FILE, json.dumps({"offset": float(state["offset"])}))
