"""A real Prometheus (Debian's `prometheus` package) on the shipped config and alert rules, pointed
at running gateways and trainers.

For the test suite and for one machine: the scrape config is deploy/prometheus/prometheus.yml with
only the targets (and, for tests, the intervals) replaced, so what is checked is what ships.

    python -m deploy.prometheus.server --gateway 127.0.0.1:8000 --trainer 127.0.0.1:9400
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from core.processes import free_port, stop_group

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent
JOBS = {"gateway": "alignloop-gateway", "trainer": "alignloop-trainer"}


def prometheus_config(gateways: list[str], trainers: list[str], scrape_s: float | None = None) -> dict:
    """The shipped config with these targets (host:port) and, if given, a scrape/evaluation interval."""
    config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    targets = {JOBS["gateway"]: gateways, JOBS["trainer"]: trainers}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    config["rule_files"] = [str(SHIPPED / f) for f in config["rule_files"]]
    if scrape_s:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = f"{scrape_s:g}s"
    return config


class PrometheusServer:
    """One Prometheus process on a loopback port, with its own data directory."""

    def __init__(
        self,
        data_dir: Path,
        gateways: list[str],
        trainers: list[str],
        scrape_s: float | None = None,
        port: int | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.config = prometheus_config(gateways, trainers, scrape_s)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where its web UI and HTTP API answer."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> PrometheusServer:
        """Start it and wait until it is ready to answer queries."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus is not installed: run `bash deploy/install-test-tools.sh` (Debian's "
                "prometheus package; `make test` runs it)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.data_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with open(
            self.data_dir / "prometheus.log", "ab"
        ) as out:  # the child process keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.process.returncode}; see {self.data_dir / 'prometheus.log'}"
                )
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    log.info("prometheus: ready on %s", self.url)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"prometheus was not ready within {timeout}s; see {self.data_dir / 'prometheus.log'}"
        )

    def api(self, path: str, **params) -> dict | list:
        """GET /api/v1/<path>; the `data` of a successful answer, else RuntimeError with its error."""
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30).json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector (raises on a query Prometheus rejects)."""
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        """Stop it (its data directory stays for inspection)."""
        if self.process is not None:
            stop_group(self.process, timeout=30)
            self.process = None


def main() -> None:
    """Run Prometheus on the shipped config until Ctrl-C."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateway", action="append", default=[], help="host:port of a gateway (repeatable)")
    parser.add_argument("--trainer", action="append", default=[], help="host:port of a trainer's metrics")
    parser.add_argument("--data-dir", type=Path, default=Path("state/prometheus"))
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = PrometheusServer(
        args.data_dir, args.gateway or ["127.0.0.1:8000"], args.trainer or ["127.0.0.1:9400"], port=args.port
    ).start()
    print(
        f"Prometheus on {server.url} (config {server.data_dir / 'prometheus.yml'}); Ctrl-C stops it",
        flush=True,
    )
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
