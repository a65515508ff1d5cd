"""Versions as LoRA adapters on one engine, end to end with real parts (Kafka, the gateway with its
vLLM engine, simulated users over HTTP): an adapter version people prefer runs as a canary beside
the serving version on the same engine and is promoted, a worse adapter is rolled back, with one
engine process throughout and no failed request; each adapter version's greedy text is its merged
checkpoint's; an adapter the engine cannot hold is refused with its reason and changes nothing."""

import random
import shutil

import httpx
import pytest
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import LoRAConfig, SFTConfig, TrainConfig
from synthetic.corpus import PLACES
from synthetic.users import Population
from tests.conftest import ADMIN_KEY, PEOPLE_KEYS, make_gateway
from tests.gateway.helpers import decided, engine_processes, greedy
from tests.gateway.test_parity import transformers_greedy
from tests.gateway.test_promotion import PROMOTION, PROMPTS
from trainer.lora import ADAPTER_DIR, add_adapter
from trainer.runtime import Runtime
from trainer.sft import train_sft

LORA = LoRAConfig(
    enabled=True,
    r=8,
    alpha=16,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)


def _colour_adapter(base, out, colour: str):
    """A LoRA adapter on the base that describes every animal as `colour` (the users' rule loves
    blue and does not care for red); `out` holds it (adapter/) and its merged checkpoint."""
    rng = random.Random(colour)
    demos = [(p, f"The {p[11:-1]} is {colour} and it lives near {rng.choice(PLACES)}.") for p in PROMPTS * 48]
    runtime = Runtime.resolve(TrainConfig(lora=LORA))
    return train_sft(base, demos, out, SFTConfig(batch_size=16, learning_rate=3e-3, save_every=0), runtime)


@pytest.fixture(scope="module")
def adapter_gateway(tmp_path_factory, tiny_model_dir, kafka_broker):
    """A gateway of its own whose engine holds LoRA adapters from its start."""
    gw = make_gateway(
        tmp_path_factory.mktemp("adapters"),
        tiny_model_dir,
        kafka_broker.bootstrap,
        extra=PROMOTION,
        engine="enable_lora = true\nmax_lora_rank = 8",
    ).start()
    yield gw
    gw.stop()


def test_adapter_versions_are_canaried_promoted_and_rolled_back_on_one_engine(
    adapter_gateway, tiny_model_dir, tmp_path
):
    gw = adapter_gateway
    blue = _colour_adapter(tiny_model_dir, tmp_path / "blue", "blue")
    red = _colour_adapter(tiny_model_dir, tmp_path / "red", "red")
    base = gw.registry.current()
    engines = engine_processes(gw)
    assert engines, "the engine runs in processes of its own"
    users = Population(
        gw.url, PEOPLE_KEYS, PROMPTS, users=4, k=4, max_tokens=16, pause_s=0.2, compare_every=2
    ).start()
    try:
        better = gw.registry.publish(blue / ADAPTER_DIR, base=base, source="test:blue-adapter", parent=base)
        gw.registry.propose(better)
        promoted = decided(gw, better)
        assert engine_processes(gw) == engines
        worse = gw.registry.publish(red / ADAPTER_DIR, base=base, source="test:red-adapter", parent=better)
        gw.registry.propose(worse)
        rolled_back = decided(gw, worse)
    finally:
        tally = users.stop()

    assert tally.failed == 0, tally.errors[:3]
    assert promoted["decision"] == "promoted" and promoted["against"] == base, promoted
    assert rolled_back["decision"] == "rolled_back" and rolled_back["against"] == better, rolled_back
    assert gw.registry.current() == better and tally.mixed > 0
    assert engine_processes(gw) == engines, "a canary or promotion of an adapter started an engine"
    with gw.client(ADMIN_KEY) as admin:
        listing = admin.get("/admin/versions").json()
    assert [(e["version"], e["adapters"]) for e in listing["engines"]] == [(base, {better: "serving"})]
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'alignloop_policy_swap_seconds_count{mode="canary_promoted"} 1.0' in metrics
    assert "alignloop_adapters_loaded 1.0" in metrics
    assert "alignloop_adapter_load_seconds_count 2.0" in metrics  # the two canaries

    # Each adapter version writes what its merged checkpoint writes (an operator's switch to an
    # adapter of the loaded base is a change of adapter: no engine, no reload).
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for version, merged in ((worse, red), (better, blue)):
        with gw.client(ADMIN_KEY) as admin:
            r = admin.post("/admin/policy", json={"version": version})
        assert r.status_code == 200 and r.json()["serving"] == version, r.text
        for prompt in PROMPTS[:3]:
            served_by, text = greedy(gw, prompt)
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            assert (served_by, text) == (version, transformers_greedy(merged, ids, 16))
    assert 'alignloop_policy_swap_seconds_count{mode="adapter"} 2.0' in httpx.get(f"{gw.url}/metrics").text
    assert engine_processes(gw) == engines


def test_an_adapter_changed_after_publishing_or_that_cannot_load_is_refused_and_changes_nothing(
    adapter_gateway, tmp_path
):
    gw = adapter_gateway
    serving = gw.registry.current()
    base = gw.registry.info(serving).base or serving
    engines = engine_processes(gw)
    good = tmp_path / "good"
    add_adapter(
        AutoModelForCausalLM.from_pretrained(gw.registry.path(base)), LORA, "CAUSAL_LM"
    ).save_pretrained(good)
    tampered = gw.registry.publish(good, base=base, source="test:tampered")
    weights = gw.registry.path(tampered) / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # still a well-formed file: only the checksum taken at publishing tells
    weights.write_bytes(bytes(data))
    broken = tmp_path / "broken"  # an adapter for modules this model does not have
    broken.mkdir()
    shutil.copy(good / "adapter_config.json", broken)
    tensors = load_file(good / "adapter_model.safetensors")
    save_file(
        {k.replace("q_proj", "qq_proj"): v for k, v in tensors.items()}, broken / "adapter_model.safetensors"
    )
    unloadable = gw.registry.publish(broken, base=base, source="test:unloadable")

    for version, reason in ((tampered, "adapter_model.safetensors changed"), (unloadable, "could not load")):
        with gw.client(ADMIN_KEY) as admin:
            r = admin.post("/admin/policy", json={"version": version})
            assert r.status_code == 409 and reason in r.json()["error"]["message"], r.text
            assert admin.get("/admin/versions").json()["serving"] == serving
        assert greedy(gw, PROMPTS[0])[0] == serving
    assert gw.registry.current() == serving
    assert engine_processes(gw) == engines
