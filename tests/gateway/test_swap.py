"""Switching the served policy version while requests flow fails none of them."""

import json
import threading
import time

import pytest

from alignloop.config import TinyModelConfig
from inference.registry import RegistryError
from inference.tiny_model import build_tiny_model
from tests.conftest import ADMIN_KEY, MODEL
from tests.gateway.test_parity import transformers_greedy

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Count to 6."}], "max_tokens": 24}


def _load(gateway, stop: threading.Event, results: list, stream: bool) -> None:
    with gateway.client() as c:
        while not stop.is_set():
            started = time.monotonic()
            try:
                if stream:
                    with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
                        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
                        ok = r.status_code == 200 and lines[-1] == "data: [DONE]" and '"error"' not in "".join(lines)
                        version = json.loads(lines[0][6:])["policy_version"] if ok else None
                        results.append((started, ok, r.status_code, version, r.headers.get("x-policy-version")))
                else:
                    r = c.post("/v1/chat/completions", json={**CHAT, "n": 2, "temperature": 1.0})
                    version = r.json().get("policy_version") if r.status_code == 200 else None
                    results.append((started, r.status_code == 200, r.status_code, version, r.headers.get("x-policy-version")))
            except Exception as exc:  # a transport failure is a failed request too
                results.append((started, False, repr(exc), None, None))


def test_swap_under_load_fails_nothing_and_relabels(gateway):
    with gateway.client(ADMIN_KEY) as admin:
        before = admin.get("/admin/versions").json()
        assert before["serving"] == "v0001"
        stop, results = threading.Event(), []
        workers = [threading.Thread(target=_load, args=(gateway, stop, results, i % 2 == 0)) for i in range(6)]
        for w in workers:
            w.start()
        time.sleep(3)
        switched = admin.post("/admin/policy", json={"version": "v0002"})
        switched_at = time.monotonic()
        time.sleep(3)
        stop.set()
        for w in workers:
            w.join(timeout=120)
    assert switched.status_code == 200, switched.text
    assert switched.json()["previous"] == "v0001" and switched.json()["serving"] == "v0002"
    failed = [r for r in results if not r[1]]
    assert not failed, failed[:5]
    assert all(r[3] == r[4] for r in results), "body and header disagree on the version"
    versions = {r[3] for r in results}
    assert versions == {"v0001", "v0002"}, versions
    late = [r for r in results if r[0] > switched_at]
    assert late and all(r[3] == "v0002" for r in late)
    assert gateway.registry.current() == "v0002"

    # The new weights are really the ones serving: greedy output equals transformers' on v0002.
    with gateway.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "temperature": 0}).json()
    tok_path = gateway.registry.path("v0002")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_path)
    ids = tok(tok.apply_chat_template(CHAT["messages"], add_generation_prompt=True, tokenize=False),
              add_special_tokens=False)["input_ids"]
    assert r["policy_version"] == "v0002"
    assert r["choices"][0]["message"]["content"] == transformers_greedy(tok_path, ids, 24)


def test_rollback_restores_previous_version(gateway):
    with gateway.client(ADMIN_KEY) as admin:
        serving = admin.get("/admin/versions").json()["serving"]
        if serving == "v0001":
            assert admin.post("/admin/policy", json={"version": "v0002"}).status_code == 200
        r = admin.post("/admin/rollback")
        assert r.status_code == 200, r.text
        assert r.json()["serving"] == "v0001"
        with gateway.client() as c:
            done = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3})
        assert done.status_code == 200 and done.json()["policy_version"] == "v0001"
        assert done.headers["x-policy-version"] == "v0001"


def test_unknown_or_incompatible_version_is_refused_and_serving_continues(gateway, tmp_path):
    other = build_tiny_model(tmp_path / "other", TinyModelConfig(hidden_size=64, num_heads=2, pretrain_steps=1,
                                                                 corpus_examples=200))
    odd = gateway.registry.publish(other, source="test:other-shape")
    with gateway.client(ADMIN_KEY) as admin:
        serving = admin.get("/admin/versions").json()["serving"]
        r = admin.post("/admin/policy", json={"version": "v9999"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "version"
        r = admin.post("/admin/policy", json={"version": odd})
        assert r.status_code == 409 and "architecture" in r.json()["error"]["message"]
        assert admin.post("/admin/policy", json={"version": "../../etc"}).status_code == 404
        assert admin.post("/admin/policy", json={}).status_code == 400
        assert admin.get("/admin/versions").json()["serving"] == serving
    with gateway.client() as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["policy_version"] == serving


def _serving_within(gateway, version: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    with gateway.client() as c:
        while time.monotonic() < deadline:
            r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
            assert r.status_code == 200, r.text
            if r.json()["policy_version"] == version:
                return True
            time.sleep(0.3)
    return False


def test_gateway_follows_the_registry_pointer(gateway, tmp_path):
    with gateway.client(ADMIN_KEY) as admin:
        serving = admin.get("/admin/versions").json()["serving"]
    target = "v0002" if serving != "v0002" else "v0001"
    gateway.registry.set_current(target)  # what the trainer does when it promotes
    assert _serving_within(gateway, target)

    other = build_tiny_model(tmp_path / "other", TinyModelConfig(hidden_size=64, pretrain_steps=1, corpus_examples=200))
    odd = gateway.registry.publish(other, source="test:other-shape")
    gateway.registry.set_current(odd)
    deadline = time.monotonic() + 30
    while gateway.registry.current() != target and time.monotonic() < deadline:
        time.sleep(0.3)
    assert gateway.registry.current() == target, "a refused version must not stay CURRENT"
    assert _serving_within(gateway, target, timeout=2)


def test_a_corrupted_version_is_never_served(gateway):
    """Weights damaged after publishing (disk error, tampering): the switch is refused before loading."""
    with gateway.client(ADMIN_KEY) as admin:
        serving = admin.get("/admin/versions").json()["serving"]
    other = "v0002" if serving != "v0002" else "v0001"
    victim = gateway.registry.publish(gateway.registry.path(other), source="test:to-corrupt")
    weights = gateway.registry.path(victim) / "model.safetensors"
    weights.chmod(0o644)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with gateway.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/policy", json={"version": victim})
    assert r.status_code == 409 and "safetensors" in r.json()["error"]["message"]
    with pytest.raises(RegistryError):
        gateway.registry.set_current(victim)  # the registry itself will not point at it
    (gateway.registry.root / "CURRENT").write_text(victim + "\n")  # a pointer damaged by hand
    time.sleep(3)
    assert gateway.registry.current() == serving
    assert _serving_within(gateway, serving, timeout=2)
