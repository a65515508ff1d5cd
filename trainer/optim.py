"""The optimiser and its step, shared by every training stage."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainer.distributed import World


def adamw(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW over the parameters that train."""
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                   world: World = World(), average: Iterable[torch.nn.Parameter] = (),
                   max_grad_norm: float = 1.0) -> None:
    """Backward, average the gradients of `average` across ranks (parameters DDP does not see),
    clip the gradient norm, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if world.size > 1:
        for p in average:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world.size
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
