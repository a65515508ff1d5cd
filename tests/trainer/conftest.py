"""Fixtures shared by the trainer's tests."""

import pytest

from core.config import SFTConfig
from synthetic import task
from trainer.sft import train_sft


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory, tiny_model_dir):
    """The tiny model fine-tuned on the synthetic task's demonstrations (once per session)."""
    return train_sft(
        tiny_model_dir,
        task.demonstrations(480, seed=1),
        tmp_path_factory.mktemp("sft") / "sft",
        SFTConfig(batch_size=16, learning_rate=1e-3),
    )
