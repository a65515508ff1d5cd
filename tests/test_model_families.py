"""The loop on architectures other than the default Llama, built locally from random weights: a
Qwen2-style model (grouped-query attention, q/k/v biases, tied embeddings) and a Gemma-style one
(GeGLU, scaled embeddings, tied). For each, with all real parts: the gateway serves it through vLLM
(embedded feedback log, no broker), simulated people rank its answers over HTTP, the trainer
consumes their rankings and runs one round (reward model, PPO-ptx with LoRA on the projections it
finds in the architecture) and publishes the policy as an adapter, which the gateway canaries on
the serving engine until the people's blinded verdicts decide it. Nothing in the code path names
the family."""

import time

import pytest
from transformers import AutoTokenizer

from core.config import TinyModelConfig, load_settings
from synthetic.tiny_model import build_tiny_model
from synthetic.users import Population
from tests.conftest import ADMIN_KEY, PEOPLE_KEYS, make_gateway
from tests.gateway.helpers import decided, engine_processes, greedy
from tests.gateway.test_parity import transformers_greedy
from tests.gateway.test_promotion import PROMOTION, PROMPTS
from trainer.lora import full_checkpoint
from trainer.service import TrainerService

# One small round: about LoRA, publishing and the canary on this architecture, not about learning.
ROUND = [
    "train.loop.metrics_port=0",
    "train.lora.enabled=true",
    "train.lora.publish=adapter",
    "train.lora.r=8",
    "train.loop.min_new_comparisons=10",
    "train.loop.rm_max_steps=4",
    "train.loop.gate_margin=-1000.0",
    "train.loop.kl_budget=1000.0",
    "train.loop.min_judge_accuracy=0.0",
    "train.loop.gate_min_answers=8",
    "train.loop.gate_max_prompts=4",
    "train.ppo.iterations=2",
    "train.ppo.rollout_batch=8",
    "train.ppo.minibatch=4",
    "train.ppo.max_new_tokens=8",
    "train.ppo.ptx_batch=4",
    "train.ppo.rollout_engine=transformers",
    "train.rm.batch_size=4",
]


# A candidate one small round made is close to its base, and people's verdicts on it may hover at
# even: the canary ends undecided at 30 verdicts (rolled back) rather than the module's 200.
CANARY = PROMOTION.replace("max_samples = 200", "max_samples = 30")


@pytest.mark.parametrize("family", ["qwen2", "gemma"])
def test_serve_train_with_lora_and_canary_on_another_model_family(family, tmp_path):
    base = build_tiny_model(
        tmp_path / "base", TinyModelConfig(family=family, pretrain_steps=60, corpus_examples=1500)
    )
    gw = make_gateway(
        tmp_path / "gw", base, None, extra=CANARY, engine="enable_lora = true\nmax_lora_rank = 8"
    ).start()
    try:
        _serve_train_and_canary(gw, base, tmp_path)
    finally:
        gw.stop()


def _serve_train_and_canary(gw, base, tmp_path) -> None:
    engines = engine_processes(gw)
    users = Population(
        gw.url, PEOPLE_KEYS, PROMPTS, users=4, k=4, max_tokens=16, pause_s=0.2, compare_every=2
    ).start()
    trainer = TrainerService(load_settings(gw.config, ROUND))
    try:
        deadline = time.monotonic() + 600
        while not trainer.due():
            assert time.monotonic() < deadline, f"too few rankings came in: {users.tally}"
            trainer.catch_up()
        # The people pause while the round trains: on 2 cores their requests would slow it
        # several-fold (the engine and the trainer share the cores), and the round's data is in.
        users.stop()
        record = trainer.run_round()
        candidate = record["version"]
        assert record["decision"] == "proposed", record
        users.start()  # the canary's verdicts come from their blinded comparisons
        verdict = decided(gw, candidate)
    finally:
        tally = users.stop()
        trainer.close()
    info = gw.registry.info(candidate)
    assert (info.base, info.lora_rank) == ("v0001", 8)
    assert verdict["decision"] in ("promoted", "rolled_back") and verdict["against"] == "v0001", verdict
    assert tally.failed == 0 and tally.mixed > 0, tally.errors[:3]
    assert engine_processes(gw) == engines, "the canary of an adapter started an engine"

    # The adapter the gateway serves writes what the round's merged policy writes.
    with gw.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/policy", json={"version": candidate})
        assert r.status_code == 200, r.text
    merged = full_checkpoint(gw.registry, candidate, tmp_path / "merged")
    prompt_ids = AutoTokenizer.from_pretrained(base)(PROMPTS[0], add_special_tokens=False)["input_ids"]
    assert greedy(gw, PROMPTS[0]) == (candidate, transformers_greedy(merged, prompt_ids, 16))
