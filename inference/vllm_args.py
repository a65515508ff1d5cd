"""vLLM engine arguments for a checkpoint, shared by serving and the trainer's rollouts."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from core.config import EngineConfig


def engine_kwargs(path: Path, config: EngineConfig, **overrides) -> dict:
    """Arguments for vLLM's LLM / AsyncEngineArgs on the checkpoint at path."""
    # The CPU backend sizes its KV cache from this variable, not gpu_memory_utilization.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gib))
    dtype = config.dtype
    if dtype == "auto" and not torch.cuda.is_available():
        # vLLM's CPU "auto" is bfloat16; float32 keeps outputs identical to transformers'.
        dtype = "float32"
    return {
        "model": str(path),
        "tokenizer": str(path),
        "load_format": "safetensors",
        "dtype": dtype,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "enforce_eager": config.enforce_eager
        if config.enforce_eager is not None
        else not torch.cuda.is_available(),
        "tensor_parallel_size": config.tensor_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_share(),
        "seed": config.seed,
    } | overrides
