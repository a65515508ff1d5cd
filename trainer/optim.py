"""The optimiser and its step, shared by every training stage."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainer.runtime import Runtime


def adamw(
    params: Iterable[torch.nn.Parameter], lr: float, runtime: Runtime | None = None
) -> torch.optim.Optimizer:
    """AdamW over the parameters that train; the fused kernel on a GPU (one launch for all of them)."""
    fused = runtime is not None and runtime.device.type == "cuda"
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, fused=fused)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    max_grad_norm: float = 1.0,
) -> None:
    """Backward, clip the gradient norm, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    apply_gradients(optimizer, params, max_grad_norm)


def apply_gradients(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], max_grad_norm: float = 1.0
) -> None:
    """Clip the gradient norm and step, on gradients already accumulated (micro-batches)."""
    torch.nn.utils.clip_grad_norm_([p for p in params if p.requires_grad], max_grad_norm)
    optimizer.step()
