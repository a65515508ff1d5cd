"""Running the same entry points under `torchrun --nproc_per_node=N` (DDP: gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints and logs."""
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a list (every size-th item)."""
        return items[self.rank::self.size]

    def mean(self, value: float) -> float:
        """The mean of a number over all ranks."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.size


def init() -> World:
    """Join the process group torchrun set up, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return World(rank=int(os.environ.get("RANK", "0")), size=size)


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """DDP around the model when there are several processes; the model itself otherwise."""
    if world.size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
