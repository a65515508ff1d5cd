"""Rollout samplers for PPO: vLLM (fast; the trainer's weights pushed in place between iterations)
or transformers' generate (the fallback). Either returns token ids only; the log-probabilities
PPO needs are recomputed by the trainer's own model, never trusted from the sampler."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch

from core.config import EngineConfig
from inference.vllm_args import engine_kwargs

log = logging.getLogger(__name__)


class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        """One response (token ids, EOS included if reached) per prompt."""

    def update(self, model_dir: Path) -> None:
        """Sample from the weights in model_dir from now on."""

    def close(self) -> None:
        """Release the sampler's resources."""


def _cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


class TransformersSampler:
    """Samples from the live training policy with transformers' generate."""

    def __init__(self, policy: torch.nn.Module, pad_id: int, eos_id: int):
        self.policy, self.pad_id, self.eos_id = policy, pad_id, eos_id

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues from the right edge
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        torch.manual_seed(seed)
        was_training = self.policy.training
        self.policy.eval()
        with torch.no_grad():
            out = self.policy.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                       do_sample=temperature > 0, temperature=temperature or None, top_k=0, top_p=1.0,
                                       pad_token_id=self.pad_id, eos_token_id=self.eos_id)
        self.policy.train(was_training)
        return [_cut_at_eos(row[width:].tolist(), self.eos_id) for row in out]

    def update(self, model_dir: Path) -> None:
        pass  # it samples from the live policy

    def close(self) -> None:
        pass


class VLLMSampler:
    """Samples with vLLM's offline engine; update() reloads weights in place (no restart)."""

    def __init__(self, model_dir: Path, config: EngineConfig = EngineConfig()):
        from vllm import LLM

        # A training process also holds the policy, reference, RM and value models: leave room.
        self.llm = LLM(**engine_kwargs(model_dir, config, gpu_memory_utilization=0.3))
        self.eos_id = self.llm.get_tokenizer().eos_token_id

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
        from vllm import SamplingParams

        params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed + i, top_k=0, top_p=1.0)
                  for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [_cut_at_eos(list(o.outputs[0].token_ids), self.eos_id) for o in outs]

    def update(self, model_dir: Path) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_dir)})

    def close(self) -> None:
        # Stop the engine's processes now, not in an exit-time finalizer (which would log into
        # streams the caller may already have closed).
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
