"""The engine arguments a checkpoint is started with, from the typed configuration."""

import torch

from core.config import EngineConfig
from inference.vllm_args import engine_kwargs


def test_defaults_follow_the_hardware_and_settings_pass_through(tmp_path):
    on_this_machine = engine_kwargs(tmp_path, EngineConfig())
    # CUDA graphs on a GPU unless told otherwise; the CPU backend has none.
    assert on_this_machine["enforce_eager"] is (not torch.cuda.is_available())
    assert on_this_machine["tensor_parallel_size"] == 1
    assert on_this_machine["load_format"] == "safetensors"  # never a pickle checkpoint
    chosen = engine_kwargs(tmp_path, EngineConfig(enforce_eager=True, tensor_parallel_size=4))
    assert chosen["enforce_eager"] is True and chosen["tensor_parallel_size"] == 4
    assert engine_kwargs(tmp_path, EngineConfig(), tensor_parallel_size=1)["tensor_parallel_size"] == 1
