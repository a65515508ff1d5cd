"""The deployment stack, checked with what runs on this machine (no Docker daemon, no cluster):
the compose file by compose-go (the loader `docker compose` uses), the Kubernetes manifests by
kustomize and the Kubernetes API's own schemas, every alignloop setting they set by our own
config loader, every command they run by our CLI's parser, the Prometheus config by promtool."""

import secrets
import shutil
import subprocess
import tomllib

import pytest
import yaml
from kubernetes_validate import utils as k8s
from pydantic import ValidationError

from alignloop.cli import build_parser
from core.config import load_settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose"


def _env_file(path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return dict(pairs)


def _alignloop_command(argv: list[str]) -> None:
    """The CLI accepts this argument list (parses it as it would at start)."""
    args = build_parser().parse_args(argv)
    assert callable(args.run), argv


@pytest.fixture(scope="module")
def compose() -> dict:
    checker = REPO / ".cache" / "bin" / "compose-check"
    assert checker.exists(), "run `bash deploy/install-test-tools.sh` (make test does) to build compose-check"
    loaded = subprocess.run(
        [str(checker), str(COMPOSE / "compose.yaml")], capture_output=True, text=True, timeout=60
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == [
        "gateway-a",
        "gateway-b",
        "grafana",
        "init",
        "kafka",
        "lb",
        "prometheus",
        "trainer",
    ]
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def test_compose_runs_two_gateways_behind_a_balancer_with_the_trainer_and_monitoring(compose, tmp_path):
    services = compose["services"]
    for name in ("init", "gateway-a", "gateway-b", "trainer"):
        _alignloop_command(services[name]["command"])
    for name in ("gateway-a", "gateway-b", "trainer"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert "registry:/registry" in services[name]["volumes"]
    # Every long-running service says when it is healthy, and what waits on one waits for that.
    assert {n for n, s in services.items() if "healthcheck" in s} == set(services) - {"init"}
    assert all(d["condition"] == "service_healthy" for d in services["lb"]["depends_on"].values())
    assert "/readyz" in " ".join(services["gateway-a"]["healthcheck"]["test"])
    assert services["gateway-a"]["volumes"] != services["gateway-b"]["volumes"], (
        "each replica has its own spool"
    )
    nginx = (COMPOSE / "nginx.conf").read_text()
    assert (
        "server gateway-a:8000" in nginx
        and "server gateway-b:8000" in nginx
        and "proxy_buffering off" in nginx
    )
    # One key, one replica (its limits hold once), and the client's address passed on.
    assert "hash $http_authorization consistent" in nginx
    assert "X-Forwarded-For $remote_addr" in nginx
    assert services["gateway-a"]["environment"]["ALIGNLOOP_GATEWAY__TRUSTED_PROXIES"] == "*"

    # Every alignloop setting the stack sets is a real one, with a valid value.
    env = {
        **_env_file(COMPOSE / "alignloop.env.example"),
        **services["gateway-a"]["environment"],
        **services["trainer"]["environment"],
    }
    with pytest.raises(ValidationError, match="placeholder"):
        load_settings(environ=env)  # the example's secrets are refused until replaced
    settings = load_settings(
        environ={k: v.replace("CHANGE-ME", secrets.token_hex(16)) for k, v in env.items()}
    )
    assert str(settings.registry_dir) == "/registry" and settings.feedback.kafka_bootstrap == "kafka:9092"
    assert len(settings.gateway.api_keys) == 3 and len(settings.gateway.ownership_secrets) == 1
    assert settings.train.loop.metrics_host == "0.0.0.0"

    # Prometheus in the stack: the shipped rules, both replicas and the trainer as targets.
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    assert targets == {
        "alignloop-gateway": ["gateway-a:8000", "gateway-b:8000"],
        "alignloop-trainer": ["trainer:9400"],
    }
    shutil.copy(COMPOSE / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    checked = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Grafana: provisioned with that Prometheus and the shipped dashboard.
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    board = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "alignloop.yaml").read_text()
    )
    mounted = next(v for v in compose["services"]["grafana"]["volumes"] if "alignloop.json" in v)
    assert mounted.split(":")[1].startswith(board["providers"][0]["options"]["path"])


def test_the_image_copies_every_package_and_runs_the_cli():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    # Every package pyproject.toml installs (a package added later must be copied too).
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in found["include"]} | {"deploy"}
    assert packages <= copied and all((REPO / p).exists() for p in copied)
    assert 'ENTRYPOINT ["alignloop"]' in dockerfile and "deploy/install.sh" in dockerfile
    assert "ALIGNLOOP_PROFILE=runtime" in dockerfile  # the locked runtime set: no test tools
    assert "\nUSER 10001" in dockerfile and "HEALTHCHECK" not in dockerfile  # not root; each service probes


def _manifests() -> list[dict]:
    standalone = (
        REPO / ".cache" / "bin" / "kustomize"
    )  # deploy/install-test-tools.sh builds it where kubectl is missing
    command = ["kubectl", "kustomize"] if shutil.which("kubectl") else [str(standalone), "build"]
    built = subprocess.run([*command, str(DEPLOY / "k8s")], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def test_kubernetes_manifests_are_valid_and_say_what_a_gpu_cluster_needs():
    docs = _manifests()
    for doc in docs:  # the API's own OpenAPI schemas, strict: an unknown field is an error
        k8s.validate(doc, k8s.latest_version(), strict=True)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    gateway = by_kind[("StatefulSet", "alignloop-gateway")]["spec"]
    pod = gateway["template"]
    container = pod["spec"]["containers"][0]
    assert gateway["replicas"] >= 2 and gateway["updateStrategy"]["type"] == "RollingUpdate"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The spool outlives the pod: /state is a claim per replica, kept when a pod goes.
    state = next(m for m in container["volumeMounts"] if m["mountPath"] == "/state")
    assert state["name"] in {t["metadata"]["name"] for t in gateway["volumeClaimTemplates"]}
    assert state["name"] not in {v["name"] for v in pod["spec"]["volumes"]}
    assert gateway["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert by_kind[("PodDisruptionBudget", "alignloop-gateway")]["spec"]["maxUnavailable"] == 1
    # Nobody runs as root, and the trainer has probes.
    pods = [
        d["spec"].get("jobTemplate", d)["spec"]["template"]["spec"]
        for d in docs
        if "template" in d.get("spec", {})
    ]
    assert len(pods) == 3
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
        assert all(c["securityContext"]["allowPrivilegeEscalation"] is False for c in spec["containers"])
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    _alignloop_command(container["args"])
    trainer = by_kind[("Deployment", "alignloop-trainer")]["spec"]
    assert trainer["replicas"] == 1 and trainer["strategy"]["type"] == "Recreate"
    probes = trainer["template"]["spec"]["containers"][0]
    assert (
        probes["startupProbe"]["httpGet"]["port"] == probes["livenessProbe"]["httpGet"]["port"] == "metrics"
    )
    _alignloop_command(trainer["template"]["spec"]["containers"][0]["args"])
    assert by_kind[("PersistentVolumeClaim", "alignloop-registry")]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]
    env = {**by_kind[("ConfigMap", "alignloop")]["data"], **by_kind[("Secret", "alignloop")]["stringData"]}
    with pytest.raises(ValidationError, match="placeholder"):
        load_settings(environ=env)  # the example's secrets are refused until replaced
    settings = load_settings(
        environ={k: v.replace("CHANGE-ME", secrets.token_hex(16)) for k, v in env.items()}
    )
    assert str(settings.registry_dir) == "/registry" and settings.engine.gpu_memory_utilization < 0.5
