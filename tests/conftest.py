"""Shared, expensive fixtures: one tiny model and one real gateway (with its vLLM engine) per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from core.config import TinyModelConfig
from core.paths import StatePaths
from core.processes import free_port, stop_group
from registry.store import PolicyRegistry
from synthetic.corpus import pretraining_texts
from synthetic.tiny_model import build_tiny_model
from trainer.data import write_jsonl

REPO = Path(__file__).resolve().parent.parent
USER_KEY, USER2_KEY, SLOW_KEY, ADMIN_KEY = "sk-test-alice", "sk-test-bob", "sk-test-slow", "sk-test-admin"
RATER_KEY = "sk-test-rater"
PRIVATE_KEY = "sk-test-private"  # opted out of labelling sampling
# Keys with tight fairness limits, for the tests of those limits (tests/gateway/test_hostile_input.py).
ONE_AT_A_TIME_KEY, SMALL_BUDGET_KEY, FEW_REQUESTS_KEY = (
    "sk-test-one-at-a-time",
    "sk-test-small-budget",
    "sk-test-few",
)
# Several people, one key each: a canary's test counts at most a share of its verdicts per key.
PEOPLE_KEYS = [f"sk-test-person-{i}" for i in range(4)]
FUZZ_KEY = (
    "sk-test-fuzz"  # tests/gateway/test_fuzz.py: generous limits, so fuzzing spends no other key's budget
)
MODEL = "alignloop-policy"
# Small enough to build in seconds, trained enough to answer the corpus' questions.
TEST_MODEL = TinyModelConfig(pretrain_steps=120, corpus_examples=3000)


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


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real single-node Apache Kafka broker for the whole session."""
    from deploy.kafka.broker import KafkaBroker

    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    yield broker
    broker.stop()


@dataclass
class Gateway:
    """A running gateway process and what tests need to talk to it."""

    url: str
    state_dir: Path
    registry: PolicyRegistry
    config: Path
    log: Path
    process: subprocess.Popen | None = None

    def client(self, key: str = USER_KEY, **kw) -> httpx.Client:
        """An HTTP client with this key's bearer header."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kw)

    def start(self, wait_ready: bool = True) -> Gateway:
        """Start `alignloop serve`; wait for /readyz (engine warm) or only /healthz."""
        self.launch()
        return self.wait(ready=wait_ready)

    def launch(self) -> Gateway:
        """Start `alignloop serve` without waiting for it."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "alignloop", "serve", "--config", str(self.config)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    def wait(self, ready: bool = True) -> Gateway:
        """Wait for /readyz (engine warm) or only /healthz of a launched gateway."""
        path = "/readyz" if ready else "/healthz"
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}; log:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready after 600s; log:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    def stop(self, kill: bool = False) -> None:
        """Stop the process: SIGTERM (graceful) or SIGKILL (a crash)."""
        if self.process is None:
            return
        stop_group(self.process, kill=kill)
        self.process = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _write_config(
    path: Path,
    state_dir: Path,
    port: int,
    kafka: str | None,
    swap_mode: str,
    labelling: str,
    registry_dir: Path | None = None,
    secret: str | None = None,
    extra: str = "",
    feedback_lines: str = "",
    engine_lines: str = "",
) -> None:
    feedback = f'[feedback]\nkafka_bootstrap = "{kafka}"\nkafka_timeout_s = 3\n' if kafka else "[feedback]\n"
    feedback += feedback_lines
    shared = f'registry_dir = "{registry_dir}"' if registry_dir else ""
    secrets = f'ownership_secrets = ["{secret}"]' if secret else ""
    people = "\n".join(
        f'  {{ key = "{k}", name = "person-{i}", role = "user", requests_per_minute = 100000 }},'
        for i, k in enumerate(PEOPLE_KEYS)
    )
    path.write_text(f"""
state_dir = "{state_dir}"
{shared}
[gateway]
port = {port}
{secrets}
max_body_bytes = 65536
max_prompt_tokens = 200
api_keys = [
  {{ key = "{USER_KEY}", name = "alice", role = "user", max_tokens = 256, requests_per_minute = 100000 }},
  {{ key = "{USER2_KEY}", name = "bob", role = "user", max_n = 2 }},
  {{ key = "{SLOW_KEY}", name = "slow", role = "user", requests_per_minute = 2 }},
  {{ key = "{RATER_KEY}", name = "rita", role = "rater" }},
  {{ key = "{PRIVATE_KEY}", name = "private", role = "user", label_sampling = false }},
  {{ key = "{ONE_AT_A_TIME_KEY}", name = "solo", role = "user", max_concurrent_requests = 1 }},
  {{ key = "{SMALL_BUDGET_KEY}", name = "frugal", role = "user", generated_tokens_per_minute = 500 }},
  {{ key = "{FEW_REQUESTS_KEY}", name = "few", role = "user", requests_per_minute = 10 }},
  {{ key = "{FUZZ_KEY}", name = "fuzz", role = "user", max_tokens = 64, max_concurrent_requests = 64, generated_tokens_per_minute = 100000000, requests_per_minute = 1000000 }},
{people}
  {{ key = "{ADMIN_KEY}", name = "ops", role = "admin" }},
]
failed_auth_per_minute = 30
[engine]
max_model_len = 256
swap_mode = "{swap_mode}"
{engine_lines}
{feedback}
[gateway.labelling]
{labelling}
{extra}
""")


def write_pretraining_data(state_dir: Path) -> None:
    """The pretraining text a trainer on this state directory mixes into PPO (as the tiny model's build writes it)."""
    write_jsonl(StatePaths(state_dir).pretraining_data, ({"text": t} for t in pretraining_texts(512, seed=0)))


def make_gateway(
    root: Path,
    model_dir: Path,
    kafka: str | None,
    swap_mode: str = "in_place",
    labelling: str = "sample_rate = 0.0",
    replica_of: Gateway | None = None,
    secret: str | None = None,
    extra: str = "",
    feedback: str = "",
    engine: str = "",
) -> Gateway:
    """A configured, not yet started gateway whose registry holds v0001 (current) and v0002
    (same shapes, other weights). Labelling sampling is off unless asked for (TOML lines of the
    [gateway.labelling] table): the queue's extra generations would otherwise share the engine
    with tests that count its requests. A `replica_of` another gateway shares that one's registry
    (give both the same ownership `secret`). `extra`: more TOML tables (e.g. "[promotion]...");
    `feedback`, `engine`: more lines of the [feedback] and [engine] tables."""
    state_dir = root / "state"
    write_pretraining_data(state_dir)
    if replica_of is not None:
        registry = replica_of.registry
    else:
        registry = PolicyRegistry(state_dir / "registry")
        registry.publish(model_dir, source="tiny-model", make_current=True)
        registry.publish(
            perturbed_copy(model_dir, root / "v2", seed=2), source="test:perturbed", parent="v0001"
        )
    config = root / "alignloop.toml"
    _write_config(
        config,
        state_dir,
        free_port(),
        kafka,
        swap_mode,
        labelling,
        registry.root if replica_of is not None else None,
        secret,
        extra,
        feedback,
        engine,
    )
    port = int(
        next(line for line in config.read_text().splitlines() if line.startswith("port")).split("=")[1]
    )
    return Gateway(f"http://127.0.0.1:{port}", state_dir, registry, config, root / "gateway.log")


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, tiny_model_dir, kafka_broker) -> Gateway:
    """The shared gateway: a real `alignloop serve` process publishing to the real Kafka broker."""
    gw = make_gateway(tmp_path_factory.mktemp("gateway"), tiny_model_dir, kafka_broker.bootstrap).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def embedded_gateway(tmp_path_factory, tiny_model_dir) -> Gateway:
    """A second gateway with no broker configured (feedback goes to the embedded local log), and
    blue/green as its swap mode."""
    gw = make_gateway(
        tmp_path_factory.mktemp("embedded"), tiny_model_dir, None, swap_mode="blue_green"
    ).start()
    yield gw
    gw.stop()
