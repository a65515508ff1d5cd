"""The shipped Prometheus config, alert rules and Grafana dashboard name only metrics that the
gateway and the trainer really export (a renamed metric would otherwise leave a blank panel or an
alert that never fires)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.config import Settings
from tests.conftest import REPO
from trainer.service import TrainerService

DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\balignloop_[a-z_]+")
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def _families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _exported(gateway, tmp_path: Path) -> set[str]:
    gateway_metrics = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    settings = Settings(state_dir=tmp_path)
    settings.train.loop.metrics_port = 0
    settings.train.ppo.ptx_coef = 0.0  # no pretraining text needed to list the metrics
    trainer = TrainerService(settings)
    try:
        trainer_metrics = generate_latest(trainer.metrics_registry).decode()
    finally:
        trainer.close()
    return _families(gateway_metrics) | _families(trainer_metrics)


def test_dashboard_and_alerts_use_exported_metrics(gateway, tmp_path):
    dashboard = json.loads((DEPLOY / "grafana" / "alignloop.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rules = [r for g in alerts["groups"] for r in g["rules"]]
    assert exprs and rules and all(r["annotations"]["summary"] for r in rules)
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert {j["job_name"] for j in config["scrape_configs"]} == {"alignloop-gateway", "alignloop-trainer"}

    exported = _exported(gateway, tmp_path)
    used = {m for e in exprs + [r["expr"] for r in rules] for m in METRIC.findall(e)}
    assert len(used) > 20
    missing = sorted(m for m in used if _family(m) not in exported)
    assert not missing, f"not exported by the gateway or the trainer: {missing}"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `bash deploy/install-test-tools.sh` (make test does)"
    return subprocess.run(
        [promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=120
    )


def test_promtool_accepts_the_config_and_the_alert_rules():
    checked = _promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0 and "1 rule files found" in checked.stdout, checked.stdout + checked.stderr


def test_alerts_fire_when_they_should_and_not_before():
    tested = _promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
