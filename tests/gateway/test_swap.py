"""Switching the served policy version while requests flow fails none of them."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from core.config import TinyModelConfig
from registry.errors import RegistryError
from synthetic.tiny_model import build_tiny_model
from tests.conftest import ADMIN_KEY, MODEL
from tests.feedback.helpers import wait_for_events
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
                        ok = (
                            r.status_code == 200
                            and lines[-1] == "data: [DONE]"
                            and '"error"' not in "".join(lines)
                        )
                        version = json.loads(lines[0][6:])["policy_version"] if ok else None
                        results.append(
                            (started, ok, r.status_code, version, r.headers.get("x-policy-version"))
                        )
                else:
                    r = c.post("/v1/chat/completions", json={**CHAT, "n": 2, "temperature": 1.0})
                    version = r.json().get("policy_version") if r.status_code == 200 else None
                    results.append(
                        (
                            started,
                            r.status_code == 200,
                            r.status_code,
                            version,
                            r.headers.get("x-policy-version"),
                        )
                    )
            except Exception as exc:  # a transport failure is a failed request too
                results.append((started, False, repr(exc), None, None))


def _serving(gateway) -> str:
    with gateway.client(ADMIN_KEY) as admin:
        return admin.get("/admin/versions").json()["serving"]


def _switch_under_load(gateway, target: str, mode: str) -> None:
    """Switch to `target` while 6 clients stream and not; no request may fail or be mislabelled."""
    with gateway.client(ADMIN_KEY) as admin:
        previous = admin.get("/admin/versions").json()["serving"]
        stop, results = threading.Event(), []
        workers = [
            threading.Thread(target=_load, args=(gateway, stop, results, i % 2 == 0)) for i in range(6)
        ]
        for w in workers:
            w.start()
        time.sleep(3)
        switched = admin.post("/admin/policy", json={"version": target, "mode": mode})
        switched_at = time.monotonic()
        time.sleep(3)
        stop.set()
        for w in workers:
            w.join(timeout=120)
    assert switched.status_code == 200, switched.text
    assert switched.json()["previous"] == previous and switched.json()["serving"] == target
    assert switched.json()["method"] == mode
    failed = [r for r in results if not r[1]]
    assert not failed, failed[:5]
    assert all(r[3] == r[4] for r in results), "body and header disagree on the version"
    versions = {r[3] for r in results}
    assert versions == {previous, target}, versions
    late = [r for r in results if r[0] > switched_at]
    assert late and all(r[3] == target for r in late)
    assert gateway.registry.current() == target


def _assert_greedy_is(gateway, version: str) -> None:
    """The weights serving are really `version`'s: greedy output equals transformers' on them."""
    with gateway.client() as c:
        r = c.post("/v1/chat/completions", json={**CHAT, "temperature": 0}).json()
    tok_path = gateway.registry.path(version)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_path)
    ids = tok(
        tok.apply_chat_template(CHAT["messages"], add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )["input_ids"]
    assert r["policy_version"] == version
    assert r["choices"][0]["message"]["content"] == transformers_greedy(tok_path, ids, 24)


def _engines_settle(gateway, expected: list[dict], timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    with gateway.client(ADMIN_KEY) as admin:
        while True:
            engines = admin.get("/admin/versions").json()["engines"]
            if engines == expected or time.monotonic() > deadline:
                return engines
            time.sleep(0.5)


def test_swap_under_load_fails_nothing_and_relabels(gateway):
    assert _serving(gateway) == "v0001"
    _switch_under_load(gateway, "v0002", "in_place")
    _assert_greedy_is(gateway, "v0002")


def _fewer_layers_copy(src: Path, dst: Path) -> Path:
    """The same tokenizer on a model of another shape (its first layer only)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    model.model.layers = model.model.layers[:1]
    model.config.num_hidden_layers = 1
    model.save_pretrained(dst, safe_serialization=True)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, dst / f.name)
    return dst


def test_blue_green_swap_under_load_fails_nothing_and_retires_the_old_engine(gateway):
    serving = _serving(gateway)
    target = "v0002" if serving != "v0002" else "v0001"
    _switch_under_load(gateway, target, "blue_green")
    _assert_greedy_is(gateway, target)
    assert _engines_settle(
        gateway, [{"version": target, "role": "serving", "in_flight": 0, "adapters": {}}]
    ) == [{"version": target, "role": "serving", "in_flight": 0, "adapters": {}}], (
        "the old engine was not shut down"
    )

    with gateway.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/policy", json={"version": target, "mode": "sideways"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "mode"


def test_canary_takes_a_fraction_and_its_feedback_is_labelled(gateway, kafka_broker):
    serving = _serving(gateway)
    candidate = "v0002" if serving != "v0002" else "v0001"
    with gateway.client(ADMIN_KEY) as admin:
        assert admin.delete("/admin/canary").status_code == 404
        assert admin.post("/admin/canary", json={"version": candidate, "fraction": 1.5}).status_code == 400
        assert admin.post("/admin/canary", json={"version": serving, "fraction": 0.5}).status_code == 409
        assert admin.post("/admin/canary", json={"version": "v9999", "fraction": 0.5}).status_code == 404
        r = admin.post("/admin/canary", json={"version": candidate, "fraction": 0.5})
        assert r.status_code == 200, r.text
        listing = admin.get("/admin/versions").json()
        assert listing["canary"] == {"version": candidate, "fraction": 0.5}
        assert {e["role"]: e["version"] for e in listing["engines"]} == {
            "serving": serving,
            "canary": candidate,
        }
        metrics = admin.get("/metrics").text
        assert f'alignloop_canary_fraction{{version="{candidate}"}} 0.5' in metrics

    served = []
    with gateway.client() as c:
        for i in range(40):  # 40 end users (OpenAI's `user` field) behind one key
            r = c.post(
                "/v1/completions",
                json={
                    "model": MODEL,
                    "prompt": f"Say {i}.",
                    "max_tokens": 4,
                    "n": 2,
                    "temperature": 1.0,
                    "user": f"end-user-{i}",
                },
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["policy_version"] == r.headers["x-policy-version"]
            served.append(body)
        by_version = {v: [b for b in served if b["policy_version"] == v] for v in (serving, candidate)}
        assert sum(map(len, by_version.values())) == 40
        # 40 users, each on the canary with probability 1/2: outside 8..32 has probability below 1e-4.
        assert 8 <= len(by_version[candidate]) <= 32, {v: len(b) for v, b in by_version.items()}
        # Sticky: each user's later requests go to the version that user got first.
        for i in (0, 1, 2, 3):
            again = {
                c.post(
                    "/v1/completions",
                    json={"model": MODEL, "prompt": "Again.", "max_tokens": 2, "user": f"end-user-{i}"},
                ).json()["policy_version"]
                for _ in range(4)
            }
            assert again == {served[i]["policy_version"]}, (i, again)
        feedback = {}
        for version, bodies in by_version.items():
            ids = [ch["id"] for ch in bodies[0]["choices"]]
            a = c.post("/v1/feedback/pairwise", json={"chosen": ids[0], "rejected": ids[1]})
            b = c.post("/v1/feedback/ratings", json={"choice_id": ids[0], "rating": 1})
            assert a.status_code == b.status_code == 202, (a.text, b.text)
            feedback[a.json()["event_id"]] = feedback[b.json()["event_id"]] = version
    found = wait_for_events(gateway, kafka_broker.bootstrap, set(feedback))
    assert {e: found[e].event.policy_version for e in feedback} == feedback

    # Promoting the canary's version reuses its warm engine: no start-up, the old engine retires.
    with gateway.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/policy", json={"version": candidate})
        assert r.status_code == 200 and r.json()["serving"] == candidate, r.text
        assert r.json()["method"] == "canary_promoted", "promoting a canary reuses its engine"
        assert admin.get("/admin/versions").json()["canary"] is None
    assert _engines_settle(
        gateway, [{"version": candidate, "role": "serving", "in_flight": 0, "adapters": {}}]
    ) == [{"version": candidate, "role": "serving", "in_flight": 0, "adapters": {}}]
    with gateway.client() as c:
        versions = {
            c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}).json()[
                "policy_version"
            ]
            for _ in range(10)
        }
    assert versions == {candidate}


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
    other = build_tiny_model(
        tmp_path / "other",
        TinyModelConfig(hidden_size=64, num_heads=2, pretrain_steps=1, corpus_examples=200),
    )
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

    other = build_tiny_model(
        tmp_path / "other", TinyModelConfig(hidden_size=64, pretrain_steps=1, corpus_examples=200)
    )
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


def test_weights_changed_after_publishing_are_never_served(gateway):
    """Weights that are still valid safetensors but not the bytes published (stale or swapped on a
    shared volume): the recorded checksums refuse them before any engine loads them."""
    with gateway.client(ADMIN_KEY) as admin:
        serving = admin.get("/admin/versions").json()["serving"]
    victim = gateway.registry.publish(gateway.registry.path(serving), source="test:to-alter")
    weights = gateway.registry.path(victim) / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with gateway.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/policy", json={"version": victim})
    assert r.status_code == 409 and "model.safetensors changed" in r.json()["error"]["message"], r.text
    assert _serving_within(gateway, serving, timeout=2)


def test_blue_green_gateway_follows_the_pointer_and_refuses_what_it_cannot_serve(embedded_gateway, tmp_path):
    """A gateway configured for blue/green: the trainer's promotion (moving CURRENT) starts a new
    engine and moves traffic to it, also to a model of another depth; a corrupt version and one
    with another tokenizer are refused (the latter after its engine was started and checked) and
    the pointer goes back."""
    gw = embedded_gateway
    serving = _serving(gw)
    target = "v0002" if serving != "v0002" else "v0001"
    stop, results = threading.Event(), []
    workers = [threading.Thread(target=_load, args=(gw, stop, results, i % 2 == 0)) for i in range(2)]
    for w in workers:
        w.start()
    try:
        gw.registry.set_current(target)
        assert _serving_within(gw, target, timeout=600)  # a blue/green start on 2 busy cores: 1-5 min
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=120)
    assert results and not [r for r in results if not r[1]], [r for r in results if not r[1]][:5]
    assert _engines_settle(gw, [{"version": target, "role": "serving", "in_flight": 0, "adapters": {}}]) == [
        {"version": target, "role": "serving", "in_flight": 0, "adapters": {}}
    ]

    # Blue/green can change the architecture (same tokenizer); in place cannot.
    shallow = gw.registry.publish(
        _fewer_layers_copy(gw.registry.path(target), tmp_path / "shallow"),
        source="test:one-layer",
        parent=target,
    )
    with gw.client(ADMIN_KEY) as admin:
        r = admin.post("/admin/policy", json={"version": shallow, "mode": "in_place"})
        assert r.status_code == 409 and "architecture" in r.json()["error"]["message"]
    gw.registry.set_current(shallow)
    assert _serving_within(gw, shallow, timeout=600)
    _assert_greedy_is(gw, shallow)
    target = shallow

    victim = gw.registry.publish(gw.registry.path(serving), source="test:to-corrupt")
    weights = gw.registry.path(victim) / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-1000])
    other = gw.registry.publish(
        build_tiny_model(
            tmp_path / "other", TinyModelConfig(hidden_size=64, pretrain_steps=1, corpus_examples=200)
        ),
        source="test:other-tokenizer",
    )
    for bad in (victim, other):
        (gw.registry.root / "CURRENT").write_text(bad + "\n")  # as a careless operator might
        deadline = time.monotonic() + 300
        while gw.registry.current() != target and time.monotonic() < deadline:
            time.sleep(0.5)
        assert gw.registry.current() == target, f"{bad} must not stay CURRENT"
        assert _serving_within(gw, target, timeout=2)
    assert _engines_settle(gw, [{"version": target, "role": "serving", "in_flight": 0, "adapters": {}}]) == [
        {"version": target, "role": "serving", "in_flight": 0, "adapters": {}}
    ], "the refused engine was not shut down"
    with gw.client(ADMIN_KEY) as admin:
        assert admin.get("/admin/versions").json()["swap_mode"] == "blue_green"


def test_a_client_that_stops_reading_does_not_hold_a_retiring_engine(embedded_gateway):
    """Hardening item 7: a stream whose client stops reading (connection open) neither blocks a
    blue/green switch nor keeps the old engine alive; admin calls answer meanwhile."""
    gw = embedded_gateway
    serving = _serving(gw)
    target = next(v for v in ("v0001", "v0002") if v != serving)
    body = {"model": MODEL, "prompt": "The", "max_tokens": 240, "n": 9, "ignore_eos": True, "stream": True}
    with gw.client() as c, c.stream("POST", "/v1/completions", json=body) as stalled:
        assert stalled.status_code == 200
        next(stalled.iter_lines())  # one event, then the client reads nothing more, connection open
        with gw.client(ADMIN_KEY) as admin:
            r = admin.post("/admin/policy", json={"version": target})
            assert r.status_code == 200 and r.json()["method"] == "blue_green", r.text
            assert _engines_settle(
                gw, [{"version": target, "role": "serving", "in_flight": 0, "adapters": {}}], timeout=120
            ) == [{"version": target, "role": "serving", "in_flight": 0, "adapters": {}}], (
                "the stalled stream kept the old engine"
            )
            assert admin.get("/admin/versions").status_code == 200
