"""The whole loop on one machine, all real parts: Kafka, the gateway with vLLM, the trainer
service, and simulated users whose taste (a hidden rule) the trainer never sees; and a real
Prometheus on the shipped config and alert rules watching it, with the shipped dashboard's queries
asked of it."""

import json
import os
import subprocess
import sys
import time

import pytest
from deploy.prometheus.server import PrometheusServer
from synthetic.users import Population, win_rate
from synthetic.corpus import ANIMALS
from tests.conftest import REPO, USER_KEY, free_port, make_gateway
from trainer.evaluate import sampled_responses

TRAIN_PROMPTS = [f"Describe a {a}." for a in ANIMALS[:7]]
HELDOUT_PROMPTS = [f"Describe a {a}." for a in ANIMALS[7:]]
LOOP_SETTINGS = [
    "train.loop.min_new_comparisons=40", "train.loop.max_interval_s=3600", "train.loop.rm_max_steps=60",
    "train.loop.kl_budget=25",
    "train.rm.learning_rate=0.001",
    "train.ppo.iterations=6", "train.ppo.rollout_batch=12", "train.ppo.minibatch=6", "train.ppo.max_new_tokens=24",
    "train.ppo.learning_rate=0.0002", "train.ppo.rollout_engine=transformers", "train.ppo.save_every=0",
]


@pytest.fixture
def loop_gateway(tmp_path, tiny_model_dir):
    """A gateway with a broker of its own: the trainer must see only this test's users, not the
    events other tests left on the session's topics."""
    from deploy.kafka.broker import KafkaBroker

    broker = KafkaBroker(tmp_path / "kafka").start()
    gw = make_gateway(tmp_path / "gw", tiny_model_dir, broker.bootstrap).start()
    yield gw
    gw.stop()
    broker.stop()


def _gate_decisions(registry) -> dict:
    """Each trainer version's gate decision and reasons: what a failed run needs to explain itself."""
    return {v: (registry.info(v).extra.get("gate", {}).get("decision"), registry.info(v).extra.get("gate", {}).get("reasons"))
            for v in registry.names() if registry.info(v).source == "trainer"}


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) for every query of the shipped Grafana dashboard."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "alignloop.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def _check_monitoring(prom: PrometheusServer) -> None:
    """Prometheus scrapes every target, loaded every alert rule, and every dashboard panel's query
    returns data: what an operator sees is what the processes export."""
    targets = prom.api("targets")["activeTargets"]
    assert len(targets) == 3 and all(t["health"] == "up" for t in targets), \
        [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) >= 9 and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    answers = [(title, expr, prom.query(expr)) for title, expr in _dashboard_queries()]
    print("\ndashboard panels:", json.dumps({f"{t}: {e}": [r["value"][1] for r in res][:4] for t, e, res in answers}, indent=1))
    empty = [(title, expr) for title, expr, result in answers if not result]
    assert len(answers) > 25 and not empty, f"dashboard panels with no data: {empty}"


def test_the_loop_improves_the_served_policy(loop_gateway, gateway, tmp_path):
    gw = loop_gateway
    metrics_port = free_port()
    # Two gateways (this loop's and the session's) and the trainer, scraped every second.
    prom = PrometheusServer(tmp_path / "prometheus", [gw.url.removeprefix("http://"), gateway.url.removeprefix("http://")],
                            [f"127.0.0.1:{metrics_port}"], scrape_s=1).start()
    sets = [*LOOP_SETTINGS, f"train.loop.metrics_port={metrics_port}"]
    args = [a for s in sets for a in ("--set", s)]
    log = open(tmp_path / "trainer.log", "wb")
    trainer = subprocess.Popen([sys.executable, "-m", "alignloop", "trainer", "--config", str(gw.config), *args],
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    users = Population(gw.url, USER_KEY, TRAIN_PROMPTS, users=3, k=4, pause_s=1.0).start()
    try:
        # Usually ~6-9 min; the gate may reject a round (the rule is learned from sampled answers),
        # and each later round trains on more data, so allow for a rejected round or two.
        deadline = time.monotonic() + 1500
        while True:
            promoted = [v for v in gw.registry.names() if gw.registry.info(v).source == "trainer"
                        and gw.registry.info(v).extra["gate"]["decision"] == "promoted"]
            if len(promoted) >= 2 and users.tally.versions.get(promoted[-1], 0) >= 5:
                break
            assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (promoted, users.tally, _gate_decisions(gw.registry),
                                                 (tmp_path / "trainer.log").read_text()[-3000:])
            time.sleep(2)
        _check_monitoring(prom)  # while every process is still up: a stopped target's series go stale
    finally:
        tally = users.stop()
        trainer.terminate()
        trainer.wait(timeout=60)
        prom.stop()
    assert tally.failed == 0, tally.errors[:3]
    assert tally.rankings > 0
    final = promoted[-1]
    info = gw.registry.info(final)
    assert info.parent and info.extra["data"]["comparisons"] > 0 and info.extra["data"]["consumed"]
    assert gw.registry.current() == final

    # 3 held-out prompts x 64 sampled answers per policy: 192 pairs (standard error under 0.04).
    rate = win_rate(sampled_responses(gw.registry.path(final), HELDOUT_PROMPTS, per_prompt=64),
                    sampled_responses(gw.registry.path("v0001"), HELDOUT_PROMPTS, per_prompt=64))
    print(f"\nversions served: {dict(tally.versions)}; promoted {promoted}; "
          f"hidden-rule win rate of {final} vs v0001 on held-out prompts: {rate:.3f}")
    print(json.dumps({k: info.extra["gate"][k] for k in ("candidate_reward", "serving_reward", "kl_from_sft")}))
    assert rate > 0.60  # the stated margin: 10 points over no change
