"""vLLM engine arguments for a checkpoint, shared by serving and the trainer's rollouts, and the
serving engine's start with its process layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def start_async_llm(kwargs: dict, stat_loggers: list) -> Any:
    """vLLM's AsyncLLM (a serving engine) on these engine arguments; blocking: the first call imports
    vLLM and every call spawns the engine's process and loads the model."""
    # Spawn the engine's processes, never fork them from the serving process: a forked child
    # inherits every client socket (a connection the server has closed stays open in it, and is
    # reset when that engine retires: "server disconnected" for whoever reused it) and any lock
    # that another of the gateway's threads held at that instant.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if not torch.cuda.is_available():
        # AsyncLLM runs its engine core in a process of its own either way; on CPU, vLLM would also
        # give the core's one worker a process of its own (one more spawn and import of vLLM per
        # engine start) unless this is off. Off, the worker runs inside the core's process. GPUs
        # keep vLLM's default.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), stat_loggers=stat_loggers)
