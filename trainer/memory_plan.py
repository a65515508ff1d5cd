"""A round's memory, planned before anything loads: each stage's expected peak on one device
(weights, gradients, optimiser state, activations, the rollout engine's share), logged before a
round starts and checked against the device, so a round that cannot fit says so, with what to
change, instead of running out of memory part-way.

The figures are estimates from the checkpoints' headers and the settings, not measurements: they
count what the stage holds at its peak (e.g. the RM's micro-batch of K = 9 rankings' sequences),
not the allocator's slack. benchmarks/gpu_acceptance.py prints them beside measured peaks."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from core.config import Settings
from trainer.runtime import Runtime

GIB = 2**30
K_MAX = 9  # the largest ranking the feedback API accepts: the RM's worst step
ADAM_STATE = 8  # two float32 moments per trainable parameter
# Bytes a transformer layer keeps for backward per token and per unit of hidden size, in 16-bit
# compute (Korthikanti et al. 2022, without the attention matrix, which SDPA does not keep).
_ACTIVATION_BYTES = 34


class MemoryPlanError(RuntimeError):
    """A stage's planned peak exceeds the device's memory."""


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a checkpoint, read without loading its weights."""

    params: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, path: Path) -> ModelShape:
        """The shape of the checkpoint at path: its config, and its tensors' sizes from the
        safetensors headers."""
        config = json.loads((Path(path) / "config.json").read_text())
        config = config.get("text_config", config)
        hidden = config.get("hidden_size") or config.get("n_embd")
        return cls(
            params=sum(_tensor_elements(f) for f in sorted(Path(path).glob("*.safetensors"))),
            hidden=hidden,
            layers=config.get("num_hidden_layers") or config.get("n_layer"),
            intermediate=config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
            vocab=config["vocab_size"],
        )

    def lora_params(self, r: int, targets: list[str] | None) -> int:
        """Parameters of a rank-r adapter: on the attention projections unless targets say."""
        h, i = self.hidden, self.intermediate
        width = {"gate_proj": h + i, "up_proj": h + i, "down_proj": h + i}  # others: h + h
        names = targets or ["q_proj", "k_proj", "v_proj", "o_proj"]
        return self.layers * r * sum(width.get(n, 2 * h) for n in names)


def _tensor_elements(file: Path) -> int:
    with safe_open(file, framework="pt") as f:  # reads the header only
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (a safe_open handle is not iterable)


@dataclass(frozen=True)
class StagePlan:
    """One stage's expected peak, in bytes, by what holds it."""

    stage: str
    weights: int
    gradients: int
    optimizer: int
    activations: int
    engine: int = 0  # the vLLM rollout engine's share

    @property
    def total(self) -> int:
        """The stage's expected peak."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.engine


@dataclass(frozen=True)
class MemoryPlan:
    """Every stage of a round against the memory of the device it runs on."""

    stages: list[StagePlan]
    capacity: int
    device: str

    def table(self) -> str:
        """The plan as lines for the log (GiB)."""
        rows = [
            f"memory plan on {self.device} ({self.capacity / GIB:.1f} GiB), expected peak per stage in GiB:",
            "  stage  weights  gradients  optimizer  activations  engine  total",
        ]
        for s in self.stages:
            parts = (s.weights, s.gradients, s.optimizer, s.activations, s.engine, s.total)
            rows.append(f"  {s.stage:<5}" + "".join(f"{p / GIB:>11.2f}" for p in parts))
        return "\n".join(rows)

    def summary(self) -> str:
        """The round's stages' planned peaks on one line."""
        return ", ".join(f"{s.stage} {s.total / GIB:.2f} GiB" for s in self.stages if s.stage != "sft")

    def over(self) -> list[StagePlan]:
        """The stages that do not fit."""
        return [s for s in self.stages if s.total > self.capacity]


def _activations(shape: ModelShape, sequences: int, length: int, runtime: Runtime, logits: bool) -> int:
    tokens = sequences * length
    per_layer = _ACTIVATION_BYTES * tokens * shape.hidden * _compute_bytes(runtime) // 2
    if runtime.gradient_checkpointing:  # each layer's input kept, one layer's insides at a time
        kept = shape.layers * tokens * shape.hidden * _compute_bytes(runtime) + per_layer
    else:
        kept = shape.layers * per_layer
    return kept + (2 * 4 * tokens * shape.vocab if logits else 0)  # float32 logits and their gradient


def _compute_bytes(runtime: Runtime) -> int:
    return 2 if runtime.precision == "bf16" else 4


def _trained(shape: ModelShape, runtime: Runtime, stage: str, sequences: int, length: int, logits: bool):
    """A stage training one model: (weights, gradients, optimizer, activations)."""
    shard = runtime.world.size if runtime.sharding == "fsdp" else 1
    if runtime.lora.enabled:
        trainable = shape.lora_params(runtime.lora.r, runtime.lora.target_modules)
        weights = shape.params * _compute_bytes(runtime) // shard + 4 * trainable
    else:
        trainable = shape.params
        weights = 4 * trainable // shard  # the optimiser's float32 copy
    acts = _activations(shape, sequences, length, runtime, logits)
    return StagePlan(stage, weights, 4 * trainable // shard, ADAM_STATE * trainable // shard, acts)


def plan_round(
    pol: ModelShape, rm: ModelShape, settings: Settings, runtime: Runtime, capacity: int | None = None
) -> MemoryPlan:
    """The expected peak of a round's RM and PPO stages (SFT's too, for reference) on this runtime,
    for a policy and reward model of these shapes."""
    train = settings.train
    rm_sequences = train.rm.micro_batch_sequences or train.rm.batch_size * K_MAX
    sft = _trained(pol, runtime, "sft", train.sft.batch_size, train.sft.max_len, logits=True)
    rm_stage = _trained(rm, runtime, "rm", rm_sequences, train.rm.max_len, logits=False)
    ppo_len = train.rm.max_len  # prompt + response: what the RM scores
    policy_part = _trained(pol, runtime, "ppo", train.ppo.minibatch + train.ppo.ptx_batch, ppo_len, True)
    value_part = _trained(rm, runtime, "ppo", train.ppo.minibatch, ppo_len, logits=False)
    frozen = rm.params * _compute_bytes(runtime)  # the reward model scoring rollouts
    if runtime.lora.enabled:  # the value model's backbone is the RM's, the reference the adapter off
        value_part = dataclasses.replace(value_part, weights=value_part.weights - frozen)
    else:
        frozen += pol.params * _compute_bytes(runtime)  # the reference policy
    capacity = capacity if capacity is not None else device_memory(runtime, train.memory_limit_gib)
    engine = 0
    if train.ppo.rollout_engine == "vllm":
        engine = (
            int(train.ppo.rollout_gpu_memory * capacity)
            if runtime.device.type == "cuda"
            else pol.params * 4 + int(settings.engine.cpu_kv_cache_gib * GIB)  # its own process, fp32
        )
    ppo = StagePlan(
        "ppo",
        policy_part.weights + value_part.weights + frozen,
        policy_part.gradients + value_part.gradients,
        policy_part.optimizer + value_part.optimizer,
        max(policy_part.activations, value_part.activations),
        engine,
    )
    return MemoryPlan([sft, rm_stage, ppo], capacity, str(runtime.device))


def device_memory(runtime: Runtime, limit_gib: float | None = None) -> int:
    """What a stage may use: train.memory_limit_gib if set, else the GPU's memory or the host's
    available memory."""
    if limit_gib is not None:
        return int(limit_gib * GIB)
    if runtime.device.type == "cuda":
        return torch.cuda.get_device_properties(runtime.device).total_memory
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: do not refuse


def _advice(
    plan_for: Callable[[Runtime, Settings], MemoryPlan], runtime: Runtime, settings: Settings, stage: str
) -> list[str]:
    """Single changes to the settings, each with the stage's peak after it."""
    train = settings.train
    changes: list[tuple[str, Runtime, Settings]] = []
    if not runtime.lora.enabled:
        lora = dataclasses.replace(runtime, lora=train.lora.model_copy(update={"enabled": True}))
        changes.append(("train.lora.enabled=true", lora, settings))
    if not runtime.gradient_checkpointing:
        changes.append(
            (
                "train.gradient_checkpointing=true",
                dataclasses.replace(runtime, gradient_checkpointing=True),
                settings,
            )
        )
    if runtime.precision == "fp32" and runtime.device.type == "cuda":
        changes.append(("train.precision=bf16", dataclasses.replace(runtime, precision="bf16"), settings))
    if stage == "rm" and (train.rm.micro_batch_sequences or 1 << 30) > K_MAX:
        smaller = settings.model_copy(
            update={
                "train": train.model_copy(
                    update={"rm": train.rm.model_copy(update={"micro_batch_sequences": K_MAX})}
                )
            }
        )
        changes.append((f"train.rm.micro_batch_sequences={K_MAX}", runtime, smaller))
    out = []
    for what, rt, st in changes:
        plan = plan_for(rt, st)
        peak = next(s.total for s in plan.stages if s.stage == stage)
        out.append(f"{what} ({stage} {peak / GIB:.1f} GiB{', fits' if peak <= plan.capacity else ''})")
    return out


def check_round(policy: Path, reward_model: Path, settings: Settings, runtime: Runtime) -> MemoryPlan:
    """Plan the round and raise MemoryPlanError, naming what to change, if a stage cannot fit."""
    capacity = device_memory(runtime, settings.train.memory_limit_gib)
    shapes = ModelShape.of(policy), ModelShape.of(reward_model)

    def plan_for(rt: Runtime, st: Settings) -> MemoryPlan:
        return plan_round(*shapes, st, rt, capacity)

    plan = plan_for(runtime, settings)
    over = [s for s in plan.over() if s.stage != "sft"]  # a round trains no SFT
    if over:
        worst = max(over, key=lambda s: s.total)
        raise MemoryPlanError(
            f"{plan.table()}\nthe {worst.stage} stage needs about {worst.total / GIB:.1f} GiB and "
            f"{plan.device} has {capacity / GIB:.1f} GiB: change one of "
            + "; ".join(_advice(plan_for, runtime, settings, worst.stage) or ["a smaller model"])
            + " (or run under torchrun with train.sharding=fsdp; train.memory_limit_gib overrides the device's size)"
        )
    return plan
