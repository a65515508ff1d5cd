"""Rollout samplers for PPO: vLLM (fast; the trainer's weights loaded in place between iterations)
or transformers' generate (the fallback). Either returns token ids only; the log-probabilities
PPO needs are recomputed by the trainer's own model, never trusted from the sampler."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from core.config import EngineConfig
from inference import weight_sync
from inference.vllm_args import engine_kwargs

log = logging.getLogger(__name__)


class Sampler(Protocol):
    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int
    ) -> list[list[int]]:
        """One response (token ids, EOS included if reached) per prompt."""

    def update(self, model_dir: Path) -> None:
        """Sample from the weights in model_dir from now on."""

    def close(self) -> None:
        """Release the sampler's resources."""


def _cut_at_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


class TransformersSampler:
    """Samples from the live training policy with transformers' generate."""

    def __init__(
        self,
        policy: torch.nn.Module,
        pad_id: int,
        eos_id: int,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.policy, self.pad_id, self.eos_id, self.autocast = policy, pad_id, eos_id, autocast

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int
    ) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        device = next(self.policy.parameters()).device
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: generation continues from the right edge
            ids[i, width - len(p) :] = torch.tensor(p)
            attn[i, width - len(p) :] = 1
        torch.manual_seed(seed)
        was_training = self.policy.training
        self.policy.eval()
        with torch.no_grad(), self.autocast():
            out = self.policy.generate(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature or None,
                top_k=0,
                top_p=1.0,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_id,
            )
        self.policy.train(was_training)
        return [_cut_at_eos(row[width:].tolist(), self.eos_id) for row in out]

    def update(self, model_dir: Path) -> None:
        pass  # it samples from the live policy

    def close(self) -> None:
        pass


class VLLMSampler:
    """Samples with vLLM's offline engine; update() reloads weights in place (no restart), or, for
    a LoRA policy, update_adapter() hands the engine the new adapter: the base stays loaded and
    only the adapter (a few MB) moves, applied unmerged as the trainer applies it.

    On a GPU the engine shares the card with training: it takes `gpu_memory` of it, and sleeps
    (vLLM's sleep mode frees its KV cache and offloads its weights) between rollouts so the update
    has the memory; it wakes before the next rollout. Written for GPUs but not yet run on one (the
    GPU machine available for measurements cannot install vLLM); CPU engines have no sleep mode."""

    def __init__(
        self,
        model_dir: Path,
        config: EngineConfig | None = None,
        gpu_memory: float = 0.3,
        lora_rank: int | None = None,
    ):
        from vllm import LLM

        self.sleeps = torch.cuda.is_available()
        self._lora = None  # what requests name, once update_adapter() gave an adapter
        self.adapter_updates = 0
        lora = {"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": 1} if lora_rank else {}
        # A training process also holds the policy, reference, RM and value models: leave room.
        self.llm = LLM(
            **engine_kwargs(
                model_dir,
                config or EngineConfig(),
                gpu_memory_utilization=gpu_memory,
                tensor_parallel_size=1,  # one engine per rank, on the rank's own GPU
                worker_extension_cls=weight_sync.WORKER_EXTENSION,  # update_weights() below
                **({"enable_sleep_mode": True} if self.sleeps else {}),
                **lora,
            )
        )
        self.eos_id = self.llm.get_tokenizer().eos_token_id
        self._weights = weight_sync.SharedBlock()  # update_weights()'s, kept between updates
        self.asleep = False

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int
    ) -> list[list[int]]:
        from vllm import SamplingParams

        self._wake()
        params = [
            SamplingParams(
                max_tokens=max_new_tokens, temperature=temperature, seed=seed + i, top_k=0, top_p=1.0
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate(
            [{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=self._lora
        )
        if self.sleeps:  # give the training step the engine's memory
            self.llm.sleep(level=1)
            self.asleep = True
        return [_cut_at_eos(list(o.outputs[0].token_ids), self.eos_id) for o in outs]

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def update(self, model_dir: Path) -> None:
        """Load a whole checkpoint's weights into the running engine."""
        self._wake()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_dir)})

    def update_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load these weights (checkpoint names, any dtype) into the running engine in place, through
        shared memory: no checkpoint is written or read."""
        self._wake()
        self.llm.collective_rpc("load_shared_weights", args=self._weights.write(state))

    def update_adapter(self, adapter_dir: Path) -> None:
        """Load this adapter into the engine now (the folder may go once this returns) and sample
        with it from the next call on; the previous one is dropped. A new id each time, so the
        engine takes the new weights rather than the ones it cached."""
        from vllm.lora.request import LoRARequest

        self._wake()
        previous = self._lora
        self.adapter_updates += 1
        n = self.adapter_updates
        self._lora = LoRARequest(f"policy-{n}", n, str(adapter_dir))
        self.llm.llm_engine.add_lora(self._lora)
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)

    def close(self) -> None:
        # Stop the engine's processes now, not in an exit-time finalizer (which would log into
        # streams the caller may already have closed).
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self._weights.close()
