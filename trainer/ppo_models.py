"""The four models of PPO and how they share memory.

Full fine-tuning holds four models: the policy and the value model (trained), the SFT reference
and the reward model (frozen). With LoRA, two bases do the work of four: the policy is the SFT
base with an adapter, and the reference is that same base with the adapter switched off; the value
model is an adapter (and a head of its own) on the reward model's frozen backbone, and the reward
model is that backbone with the adapter off. Frozen weights are held in the compute dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer import lora
from trainer.distributed import full_state_dict, wrap
from trainer.lm import token_logprobs
from trainer.models import load_causal_lm, save_policy, trainable_policy
from trainer.reward_model import RewardModel
from trainer.runtime import Runtime

log = logging.getLogger(__name__)
VALUE_DIR = "value"


@dataclass
class PPOModels:
    """Policy and value (trained), reference and reward model (frozen), and their wrapped forms."""

    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None: the policy's own base with its adapter disabled
    reward_model: RewardModel
    value: RewardModel
    policy_train: torch.nn.Module  # the policy as the update calls it (DDP/FSDP when distributed)
    value_train: torch.nn.Module
    shares_backbone: bool  # value and reward model share one backbone (LoRA)

    def trainable(self) -> list[torch.nn.Parameter]:
        """What the optimiser updates."""
        return [p for p in list(self.policy.parameters()) + list(self.value.parameters()) if p.requires_grad]

    def ref_logprobs(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """log π_SFT of each target token."""
        if self.reference is None:
            with self.policy.disable_adapter():
                return token_logprobs(self.policy(input_ids=ids, attention_mask=attn).logits, ids)
        return token_logprobs(self.reference(input_ids=ids, attention_mask=attn).logits, ids)

    def scores(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The reward model's score of each sequence."""
        if self.shares_backbone:
            with self.reward_model.backbone.disable_adapter():
                return self.reward_model(ids, attn)
        return self.reward_model(ids, attn)

    def save(self, out_dir: Path, tok, runtime: Runtime, base: Path) -> None:
        """The policy (merged, servable) and what resuming needs of the value model."""
        save_policy(self.policy_train, tok, out_dir, runtime, base)
        state = None if self.shares_backbone else full_state_dict(self.value_train)  # a collective under FSDP
        if not runtime.world.main:
            return
        if self.shares_backbone:
            self.value.save_adapter(Path(out_dir) / VALUE_DIR)
        else:
            self.value.save_pretrained(Path(out_dir) / VALUE_DIR, state, dtype=torch.float32)


def load_ppo_models(
    sft: Path,
    rm: Path,
    runtime: Runtime,
    start: Path | None = None,
    adapter: Path | None = None,
    resume_from: Path | None = None,
) -> PPOModels:
    """The models for a PPO run: the policy from `start` (default SFT; with LoRA, `adapter` on the
    SFT base goes on training), the value model from the RM; or everything from `resume_from`."""
    use_lora = runtime.lora.enabled
    if resume_from is not None:
        adapter = resume_from / lora.ADAPTER_DIR if use_lora else None
        start = sft if use_lora else resume_from
    start = start or sft
    # With LoRA the reference is the policy's base with the adapter off: only right if that base is SFT.
    on_sft_base = use_lora and (adapter is not None or Path(start).resolve() == Path(sft).resolve())
    policy = trainable_policy(sft if on_sft_base else start, runtime, adapter=adapter)
    reference = None if on_sft_base else load_causal_lm(sft, runtime, frozen=True)
    if use_lora and not on_sft_base:
        log.info("ppo: the policy starts from %s, not the SFT base: the reference is a second copy", start)

    reward_model = RewardModel.from_pretrained(rm, runtime, frozen=True)
    shares = use_lora and not (runtime.world.size > 1 and runtime.sharding == "fsdp")
    if shares:
        value_dir = resume_from / VALUE_DIR if resume_from is not None else None
        value = RewardModel.with_shared_backbone(reward_model, runtime.lora, value_dir)
    else:
        value = RewardModel.from_pretrained(
            resume_from / VALUE_DIR if resume_from is not None else rm, runtime
        )
    value.train()
    world, sharding = runtime.world, runtime.sharding
    if world.size > 1 and sharding == "fsdp":  # frozen models are sharded too: they are as big
        for frozen in (reference, reward_model):
            if frozen is not None:
                wrap(frozen, world, sharding, runtime.precision)
    return PPOModels(
        policy,
        reference,
        reward_model,
        value,
        wrap(policy, world, sharding, runtime.precision),
        wrap(value, world, sharding, runtime.precision),
        shares,
    )
