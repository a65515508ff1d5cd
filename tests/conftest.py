"""Shared, expensive fixtures: one tiny model and one real gateway (with its vLLM engine) per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from alignloop.config import TinyModelConfig
from inference.registry import PolicyRegistry
from inference.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
USER_KEY, USER2_KEY, SLOW_KEY, ADMIN_KEY = "sk-test-alice", "sk-test-bob", "sk-test-slow", "sk-test-admin"
MODEL = "alignloop-policy"
# Small enough to build in seconds, trained enough to answer the corpus' questions.
TEST_MODEL = TinyModelConfig(pretrain_steps=120, corpus_examples=3000)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def perturbed_copy(src: Path, dst: Path, seed: int, scale: float = 0.05) -> Path:
    """A checkpoint of the same architecture with different weights."""
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in load_file(weights).items()}
    weights.chmod(0o644)
    save_file(tensors, weights, metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny base model, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TEST_MODEL)


@dataclass
class Gateway:
    """A running gateway process and what tests need to talk to it."""

    url: str
    state_dir: Path
    registry: PolicyRegistry
    process: subprocess.Popen
    log: Path

    def client(self, key: str = USER_KEY, **kw) -> httpx.Client:
        """An HTTP client with this key's bearer header."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kw)


def _write_config(path: Path, state_dir: Path, port: int) -> None:
    path.write_text(f"""
state_dir = "{state_dir}"
[gateway]
port = {port}
max_body_bytes = 65536
max_prompt_tokens = 200
api_keys = [
  {{ key = "{USER_KEY}", name = "alice", role = "user", max_tokens = 256 }},
  {{ key = "{USER2_KEY}", name = "bob", role = "user", max_n = 2 }},
  {{ key = "{SLOW_KEY}", name = "slow", role = "user", requests_per_minute = 2 }},
  {{ key = "{ADMIN_KEY}", name = "ops", role = "admin" }},
]
[engine]
max_model_len = 256
""")


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, tiny_model_dir) -> Gateway:
    """`alignloop serve` as a real process on a loopback port, ready to serve.

    The registry holds v0001 (the tiny model, current) and v0002 (same shapes, other weights)."""
    root = tmp_path_factory.mktemp("gateway")
    state_dir = root / "state"
    registry = PolicyRegistry(state_dir / "registry")
    registry.publish(tiny_model_dir, source="tiny-model", make_current=True)
    registry.publish(perturbed_copy(tiny_model_dir, root / "v2", seed=2), source="test:perturbed", parent="v0001")
    port = free_port()
    config = root / "alignloop.toml"
    _write_config(config, state_dir, port)
    log = root / "gateway.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "alignloop", "serve", "--config", str(config)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}; log:\n{log.read_text(errors='replace')[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready after 600s; log:\n{log.read_text(errors='replace')[-4000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield Gateway(url, state_dir, registry, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
