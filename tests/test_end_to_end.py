"""The whole loop on one machine, all real parts: Kafka, the gateway with vLLM, the trainer
service, and simulated users whose taste (a hidden rule) the trainer never sees; candidates that
pass the trainer's gate go through the gateway's canary, where the users' blinded comparisons
decide (promotion = canary, the default); and a real
Prometheus on the shipped config and alert rules watching it, with the shipped dashboard's queries
asked of it."""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from alignloop.demo import DEMO_SETTINGS
from deploy.prometheus.server import PrometheusServer
from synthetic.judge import TRAIN_PROMPTS, HiddenRuleJudge
from synthetic.users import Population
from tests.conftest import ADMIN_KEY, PEOPLE_KEYS, REPO, free_port, make_gateway


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
    """Each trainer version's gate and canary decisions and reasons: what a failed run needs to explain itself."""
    return {
        v: (
            registry.info(v).extra.get("gate", {}).get("decision"),
            registry.info(v).extra.get("gate", {}).get("reasons"),
            (registry.decision(v) or {}).get("decision"),
            (registry.decision(v) or {}).get("reason"),
        )
        for v in registry.names()
        if registry.info(v).source == "trainer"
    }


def _promoted_by_people(registry) -> list[str]:
    """Trainer versions that the canary's sequential test promoted, oldest first."""
    return [
        v
        for v in registry.names()
        if registry.info(v).source == "trainer" and (registry.decision(v) or {}).get("decision") == "promoted"
    ]


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) for every query of the shipped Grafana dashboard."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "alignloop.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def _check_monitoring(prom: PrometheusServer, patience_s: float = 90) -> None:
    """Prometheus scrapes every target, loaded every alert rule, and every dashboard panel's query
    returns data: what an operator sees is what the processes export.

    Asked again for up to `patience_s`: on two busy cores a single scrape can miss its 1 s timeout,
    which marks that target's series stale until the next one, and an operator's dashboard shows
    the gap for a second too; a panel that stays empty is the defect this looks for."""
    deadline = time.monotonic() + patience_s
    while True:
        targets = prom.api("targets")["activeTargets"]
        down = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets if t["health"] != "up"]
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        answers = [(title, expr, prom.query(expr)) for title, expr in _dashboard_queries()]
        empty = [(title, expr) for title, expr, result in answers if not result]
        if (
            len(targets) == 3
            and not down
            and len(rules) >= 9
            and not broken
            and len(answers) > 25
            and not empty
        ) or time.monotonic() > deadline:
            break
        time.sleep(3)
    print(
        "\nscrapes (url, seconds, error):",
        [(t["scrapeUrl"], t["lastScrapeDuration"], t["lastError"]) for t in targets],
    )
    print(
        "dashboard panels:",
        json.dumps({f"{t}: {e}": [r["value"][1] for r in res][:4] for t, e, res in answers}, indent=1),
    )
    assert len(targets) == 3 and not down, [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
    assert len(rules) >= 9 and not broken, broken
    assert len(answers) > 25 and not empty, (
        f"dashboard panels with no data: {empty}; targets: "
        f"{[(t['scrapeUrl'], t['lastScrapeDuration'], t['lastError']) for t in targets]}"
    )


def test_the_loop_improves_the_served_policy(loop_gateway, gateway, tmp_path):
    gw = loop_gateway
    metrics_port = free_port()
    # Two gateways (this loop's and the session's) and the trainer, scraped every second.
    prom = PrometheusServer(
        tmp_path / "prometheus",
        [gw.url.removeprefix("http://"), gateway.url.removeprefix("http://")],
        [f"127.0.0.1:{metrics_port}"],
        scrape_s=1,
    ).start()
    sets = [*DEMO_SETTINGS, f"train.loop.metrics_port={metrics_port}"]
    args = [a for s in sets for a in ("--set", s)]
    with open(tmp_path / "trainer.log", "wb") as log:  # the child process keeps its own descriptor
        trainer = subprocess.Popen(
            [sys.executable, "-m", "alignloop", "trainer", "--config", str(gw.config), *args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    users = Population(gw.url, PEOPLE_KEYS, TRAIN_PROMPTS, users=4, k=4, pause_s=1.3, compare_every=2).start()
    try:
        # Until people promoted a version of round 2 or later (trained on hundreds of rankings: round
        # 1 has only the first 40) and it served users. The gate or the canary may turn a round down
        # (the rule is learned from sampled answers), so allow for a rejected round or two.
        deadline = time.monotonic() + 1800
        while True:
            promoted = _promoted_by_people(gw.registry)
            if (
                promoted
                and gw.registry.info(promoted[-1]).extra["round"] >= 2
                and users.tally.versions.get(promoted[-1], 0) >= 5
            ):
                break
            assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (
                promoted,
                users.tally,
                _gate_decisions(gw.registry),
                (tmp_path / "trainer.log").read_text()[-3000:],
            )
            time.sleep(2)
        _check_monitoring(prom)  # while every process is still up: a stopped target's series go stale
        # A deliberately worse candidate: the base policy republished (with no trainer left to
        # propose anything newer). The users' blinded comparisons must roll it back.
        trainer.terminate()
        trainer.wait(timeout=60)
        final = promoted[-1]
        worse = gw.registry.publish(gw.registry.path("v0001"), source="test:base-republished", parent=final)
        gw.registry.propose(worse)
        deadline = time.monotonic() + 600
        while (rolled_back := gw.registry.decision(worse)) is None:
            assert time.monotonic() < deadline, httpx.get(
                f"{gw.url}/admin/promotion", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ).text
            time.sleep(2)
    finally:
        tally = users.stop()
        if trainer.poll() is None:
            trainer.terminate()
            trainer.wait(timeout=60)
        prom.stop()
    assert tally.failed == 0, tally.errors[:3]
    assert tally.rankings > 0 and tally.mixed > 0
    info = gw.registry.info(final)
    assert info.parent and info.extra["data"]["comparisons"] > 0 and info.extra["data"]["consumed"]
    assert gw.registry.current() == final
    decided = gw.registry.decision(final)
    assert (
        decided["evidence"]["n"] >= 20 and decided["evidence"]["llr"] >= decided["evidence"]["promote_bound"]
    )
    assert info.extra["gate"]["decision"] == "proposed"
    assert rolled_back["decision"] == "rolled_back" and rolled_back["against"] == final, rolled_back
    assert rolled_back["evidence"]["rate"] < 0.5 and gw.registry.candidate() is None
    for decision in (decided, rolled_back):  # sticky: one version per user during each canary
        seen = tally.versions_seen(decision["canary_started_at"] + 1, decision["at"] - 1)
        assert seen and all(len(v) == 1 for v in seen.values()), (decision["decision"], seen)

    # 3 held-out prompts x 64 sampled answers per policy: 192 pairs (standard error under 0.04).
    rate = HiddenRuleJudge(gw.registry.path("v0001"))(gw.registry.path(final))["rate"]
    print(
        f"\nversions served: {dict(tally.versions)} (+{tally.mixed} mixed); promoted by people {promoted}; "
        f"decisions {_gate_decisions(gw.registry)}; "
        f"hidden-rule win rate of {final} vs v0001 on held-out prompts: {rate:.3f}"
    )
    print(
        json.dumps({k: info.extra["gate"][k] for k in ("candidate_reward", "serving_reward", "kl_from_sft")})
    )
    assert rate > 0.60  # the stated margin: 10 points over no change
