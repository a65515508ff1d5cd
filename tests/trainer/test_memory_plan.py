"""The round's memory plan: read from the checkpoints' headers, it refuses a round that cannot fit,
before anything loads, and names the change that makes it fit."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from core.config import LoRAConfig, Settings
from trainer.memory_plan import GIB, MemoryPlanError, ModelShape, plan_round
from trainer.round import RoundInputs, train_candidate
from trainer.runtime import Runtime

# The 7B Llama of docs/benchmarks.md, counted on the meta device (no memory).
LLAMA_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 11008,
}


def llama_7b() -> ModelShape:
    with torch.device("meta"):
        params = LlamaForCausalLM(LlamaConfig(**LLAMA_7B, vocab_size=32000)).num_parameters()
    return ModelShape(params, 4096, 32, 11008, 32000)


def with_train(settings: Settings, **changes) -> Settings:
    return settings.model_copy(update={"train": settings.train.model_copy(update=changes)})


def test_the_plan_reads_a_checkpoints_size_from_its_headers(tiny_model_dir):
    shape = ModelShape.of(tiny_model_dir)
    assert shape.params == sum(t.numel() for t in load_file(tiny_model_dir / "model.safetensors").values())
    assert shape.hidden == 128 and shape.layers >= 1


def test_a_7b_round_on_one_80_gib_gpu_fits_only_with_lora_and_a_micro_batched_rm():
    gpu = Runtime(device=torch.device("cuda"), precision="bf16", gradient_checkpointing=True)
    settings = Settings()
    full = plan_round(llama_7b(), llama_7b(), settings, gpu, capacity=80 * GIB)
    assert {s.stage for s in full.over()} == {"sft", "rm", "ppo"}  # 16 bytes per trained parameter
    lora = dataclasses.replace(gpu, lora=LoRAConfig(enabled=True))
    at_once = plan_round(llama_7b(), llama_7b(), settings, lora, capacity=80 * GIB)
    micro = plan_round(
        llama_7b(),
        llama_7b(),
        with_train(settings, rm=settings.train.rm.model_copy(update={"micro_batch_sequences": 9})),
        lora,
        capacity=80 * GIB,
    )
    assert not micro.over()
    rm_at_once, rm_micro = (next(s for s in p.stages if s.stage == "rm") for p in (at_once, micro))
    # 8 rankings of K = 9 at once keep 8 times the activations of one ranking's 9 sequences.
    assert rm_at_once.activations > 6 * rm_micro.activations
    ppo = next(s for s in micro.stages if s.stage == "ppo")
    assert ppo.weights < 2 * 7e9 * 2  # the LoRA bases in bf16: the value model shares the RM's
    assert ppo.engine == int(0.3 * 80 * GIB)


def test_a_round_that_cannot_fit_refuses_before_loading_and_says_what_to_change(tiny_model_dir, tmp_path):
    settings = with_train(Settings(), memory_limit_gib=0.01, device="cpu")
    inputs = RoundInputs([], [], ["a prompt"], tiny_model_dir, tiny_model_dir, tiny_model_dir)
    with pytest.raises(MemoryPlanError) as refused:
        train_candidate(inputs, tmp_path / "round", settings, Runtime(), [], [])
    message = str(refused.value)
    assert "train.lora.enabled=true" in message and "memory plan on cpu" in message
    assert not (tmp_path / "round").exists()  # nothing was trained or written
