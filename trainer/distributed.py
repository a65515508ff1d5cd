"""Running the same entry points under `torchrun --nproc_per_node=N`: DDP (a full copy of the model
per rank) or FSDP2 (`fully_shard`: parameters, gradients and optimiser state sharded across
ranks, for models that do not fit one GPU). gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    # Where this rank's collectives run: NCCL reduces only CUDA tensors (Runtime.resolve sets it).
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints and logs."""
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a list (every size-th item)."""
        return items[self.rank :: self.size]

    def mean(self, value: float) -> float:
        """The mean of a number over all ranks."""
        if self.size == 1:
            return value
        t = self.collective_tensor([value])
        dist.all_reduce(t)
        return t.item() / self.size

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for alone)."""
        if self.size > 1:
            dist.barrier()

    def agreed_path(self, make) -> Path:
        """A path rank 0 makes (`make()`) and every rank is told: where rank 0 writes what all ranks
        read (a shared filesystem, as on one node). Every rank making its own would leave the
        others' empty."""
        made = [make() if self.main else None]
        if self.size > 1:
            dist.broadcast_object_list(made, src=0)
        return Path(made[0])

    def collective_tensor(self, values: list[float]) -> torch.Tensor:
        """Numbers as a tensor a collective of this world accepts (float64, on its device)."""
        return torch.tensor(values, dtype=torch.float64, device=self.device)


def init() -> World:
    """Join the process group torchrun set up, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if size > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return World(rank=int(os.environ.get("RANK", "0")), size=size, local_rank=local_rank)


def finish(world: World) -> None:
    """Leave the process group once every rank is done. A rank that exits with the group still up
    can abort at exit ("terminate called without an active exception": gloo's threads destroyed
    while running), failing a run that had finished."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    # Transformers names the blocks it never splits across devices; those are FSDP's units too.
    names = set()
    for m in model.modules():
        names |= set(getattr(m, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def wrap(
    model: torch.nn.Module, world: World, sharding: str = "ddp", precision: str = "fp32"
) -> torch.nn.Module:
    """The model made ready for several ranks: DDP around it, or FSDP2 applied in place (each
    decoder layer a unit, then the root); the model itself when there is one rank. In bf16, FSDP
    gathers parameters in bf16 for compute and reduces gradients in float32 (the shards stay
    float32, the optimiser's copy)."""
    if world.size == 1:
        return model
    if sharding == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        options = {"mp_policy": mixed} if precision == "bf16" else {}

        # The root is the transformers model even under a peft adapter: generate() and the
        # adapter-off reference call it directly, and the root's hooks must run on every call.
        root = model.get_base_model() if hasattr(model, "get_base_model") else model
        for layer in _decoder_layers(root):
            fully_shard(layer, **options)
        fully_shard(root, **options)
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (an FSDP2 model is its own module)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def full_state_dict(model: torch.nn.Module, *, every_rank: bool = False) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict on the CPU. Under FSDP a collective (every rank calls it),
    gathered onto rank 0 alone (the others get {}) unless every_rank, where each rank gathers one
    tensor at a time (device memory for one whole tensor, not the model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = unwrap(model)
    if not any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if every_rank:
        return {
            k: (v.full_tensor() if type(v).__name__ == "DTensor" else v).detach().cpu()
            for k, v in model.state_dict().items()
        }
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
