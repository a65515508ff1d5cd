"""Where and how a training stage computes: device, precision, sharding, LoRA, checkpointing.

Resolved once from `train.*` settings and logged, so a run that was meant for a GPU never trains
on the CPU without saying so: `device = "cuda"` without a GPU is an error, and "auto" names what
it picked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import resource
from dataclasses import dataclass, field

import torch

from core.config import LoRAConfig, TrainConfig
from trainer.distributed import World

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Runtime:
    """The resolved hardware and training options of one process."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # "fp32" or "bf16" (mixed: fp32 weights, bf16 compute)
    save_dtype: str = "auto"  # "auto" (the checkpoint's own), "fp32" or "bf16"
    world: World = World()
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    gradient_checkpointing: bool = False
    length_bucketing: bool = True
    sharding: str = "ddp"

    @classmethod
    def resolve(cls, cfg: TrainConfig, world: World = World()) -> Runtime:
        """The runtime for these settings on this machine (and this rank)."""
        device = _device(cfg.device, world)
        world = dataclasses.replace(world, device=device)  # collectives on the device the stage computes on
        precision = (
            cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        )
        if cfg.cpu_threads is not None and device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        return cls(
            device,
            precision,
            cfg.save_dtype,
            world,
            cfg.lora,
            cfg.gradient_checkpointing if cfg.gradient_checkpointing is not None else device.type == "cuda",
            cfg.length_bucketing,
            cfg.sharding,
        )

    @property
    def frozen_dtype(self) -> torch.dtype:
        """The dtype of models that only run forward (reference, reward model in PPO, evaluation)."""
        return DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward passes (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.precision])

    def to(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors on this runtime's device."""
        return tuple(t.to(self.device, non_blocking=True) for t in tensors)

    def describe(self) -> str:
        """One line for the start of a stage's log."""
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        how = (
            "fp32"
            if self.precision == "fp32"
            else f"{self.precision} mixed (fp32 weights, {self.precision} compute)"
        )
        extras = [
            f"LoRA r={self.lora.r} on {','.join(self.lora.target_modules or ['attention projections'])}"
            if self.lora.enabled
            else "full weights"
        ]
        if self.world.size > 1:
            extras.append(f"{self.sharding} over {self.world.size} ranks")
        if self.gradient_checkpointing:
            extras.append("gradient checkpointing")
        return f"device {self.device} ({name}), precision {how}, {', '.join(extras)}"

    def release_memory(self) -> None:
        """Give back the memory of models the caller has just dropped (the GPU's cached blocks too),
        so the next stage, or a vLLM engine's memory check, finds it free."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def reset_peak_memory(self) -> None:
        """Start measuring peak memory afresh (GPU only; the CPU's peak RSS cannot be reset)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_gib(self) -> float:
        """Peak GPU memory since the last reset, or the process's peak RSS on the CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _device(wanted: str, world: World) -> torch.device:
    if wanted == "auto":
        return torch.device(f"cuda:{world.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(wanted)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"train.device is {wanted!r} but torch sees no GPU (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda}); use train.device=auto or cpu, or fix the driver"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{world.local_rank}")
    return device
