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

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


def ranking_pairs(ranking: list[list[int]]) -> list[tuple[int, int]]:
    """(better, worse) index pairs of a best-first ranking whose inner lists are ties."""
    return [(w, l) for i, better in enumerate(ranking) for worse in ranking[i + 1:] for w in better for l in worse]


def kwise_loss(rewards: torch.Tensor, ranking: list[list[int]]) -> torch.Tensor:
    """The loss of one ranking element, given the K rewards of its responses."""
    pairs = ranking_pairs(ranking)
    if not pairs:  # everything tied: no signal
        return rewards.sum() * 0.0
    w = torch.tensor([p[0] for p in pairs])
    l = torch.tensor([p[1] for p in pairs])
    return -F.logsigmoid(rewards[w] - rewards[l]).mean()


class RewardModel(nn.Module):
    """r_θ(x, y): a transformer backbone and a linear head read at the last real token."""

    def __init__(self, backbone: nn.Module, bias: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (backbone.config.hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        # Normalisation offset so that reference responses score 0 on average (the paper's bias).
        self.register_buffer("offset", torch.tensor(float(bias)))

    @property
    def config(self):
        return self.backbone.config

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head at every position: [batch, seq] (the value function uses all of them)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden).squeeze(-1) - self.offset

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One score per sequence, read at its last non-padding token (right padding)."""
        values = self.token_values(input_ids, attention_mask)
        last = attention_mask.long().sum(dim=1) - 1
        return values[torch.arange(values.shape[0]), last]

    @classmethod
    def from_pretrained(cls, path: Path) -> "RewardModel":
        """Load a saved reward model, or start one from a causal-LM checkpoint (fresh head)."""
        path = Path(path)
        backbone = AutoModel.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
        model = cls(backbone, bias=meta.get("offset", 0.0))
        if (path / HEAD_FILE).exists():
            head = load_file(path / HEAD_FILE)
            model.head.load_state_dict({"weight": head["weight"], "bias": head["bias"]})
        return model

    def save_pretrained(self, path: Path) -> None:
        """Backbone in HF format, head and offset beside it; safetensors only."""
        path = Path(path)
        self.backbone.save_pretrained(path, safe_serialization=True)
        save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()}, path / HEAD_FILE)
        (path / META_FILE).write_text(json.dumps({"offset": float(self.offset)}))
