"""A single-node Apache Kafka broker (KRaft) run from Maven Central jars.

For the test suite and for one-machine installs: the Apache download mirrors are not reachable
on the project's machines, Maven Central is. The jars are resolved once into .cache/kafka-jars
(`mvn dependency:copy-dependencies` on deploy/kafka/pom.xml); the broker listens on loopback
ports chosen at start and keeps them across stop()/start(), so clients can ride out a restart.

    python -m deploy.kafka.broker [--data-dir DIR] [--port N]    # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import base64
import logging
import socket
import subprocess
import time
import uuid
from pathlib import Path

from core.processes import free_ports, stop_group

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
POM = Path(__file__).resolve().parent / "pom.xml"
JARS = REPO / ".cache" / "kafka-jars"


def ensure_jars(jars: Path = JARS) -> Path:
    """The folder of broker jars, resolving it from Maven Central the first time."""
    if list(jars.glob("kafka_2.13-*.jar")):
        return jars
    log.info("kafka: resolving broker jars from Maven Central into %s (once)", jars)
    jars.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={jars}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not list(jars.glob("kafka_2.13-*.jar")):
        raise RuntimeError(
            "could not resolve Kafka from Maven Central (is `mvn` installed and Maven Central "
            f"reachable?):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    log.info("kafka: %d jars resolved in %.0fs", len(list(jars.glob("*.jar"))), time.monotonic() - started)
    return jars


class KafkaBroker:
    """One combined broker+controller node on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        partitions: int = 3,
        sasl_users: dict[str, str] | None = None,
    ):
        """With sasl_users (name -> password), clients must authenticate with SASL/PLAIN."""
        self.data_dir = Path(data_dir)
        # Two different ports: a broker whose listener and controller share one does not start.
        picked = free_ports(2)
        self.port = port or picked[0]
        self.controller_port = picked[1] if picked[1] != self.port else picked[0]
        self.partitions = partitions
        self.sasl_users = sasl_users
        self.process: subprocess.Popen | None = None

    def client_security(self) -> dict:
        """kafka-python keyword arguments a client needs (the first SASL user's credentials)."""
        if not self.sasl_users:
            return {}
        user, password = next(iter(self.sasl_users.items()))
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": user,
            "sasl_plain_password": password,
        }

    @property
    def bootstrap(self) -> str:
        """The bootstrap address for clients."""
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        name = "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"
        security = []
        if self.sasl_users:
            users = " ".join(
                f'user_{u}="{p}"' for u, p in {"broker": "broker-secret", **self.sasl_users}.items()
            )
            security = [
                "sasl.enabled.mechanisms=PLAIN",
                "sasl.mechanism.inter.broker.protocol=PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config="
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="broker" password="broker-secret" {users};',
            ]
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"listeners={name}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners={name}://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{name}:{name}",
                    f"inter.broker.listener.name={name}",
                    *security,
                    f"log.dirs={self.data_dir / 'logs'}",
                    f"num.partitions={self.partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                ]
            )
            + "\n"
        )
        (self.data_dir / "log4j2.properties").write_text(
            "rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
            "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
            "appender.stdout.layout.type=PatternLayout\nappender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
            "logger.kafka.name=kafka\nlogger.kafka.level=WARN\n"
        )
        return props

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{ensure_jars()}/*",
            main,
            *args,
        ]

    def start(self, timeout: float = 120) -> KafkaBroker:
        """Start (or restart) the broker and wait until it answers."""
        props = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = "-"
            while cluster_id.startswith("-"):  # 1 in 64 would be read as an option by the storage tool
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            formatted = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(props)
                ),
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise RuntimeError(
                    f"formatting Kafka's storage in {self.data_dir} failed (exit {formatted.returncode}):\n"
                    f"{formatted.stdout[-2000:]}\n{formatted.stderr[-2000:]}"
                )
        with open(self.data_dir / "broker.log", "ab") as out:  # the child process keeps its own descriptor
            self.process = subprocess.Popen(
                self._java("kafka.Kafka", str(props)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Kafka exited with {self.process.returncode}; see {self.data_dir / 'broker.log'}"
                )
            if self._answers():
                log.info("kafka: broker up on %s", self.bootstrap)
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Kafka did not answer within {timeout}s; see {self.data_dir / 'broker.log'}")

    def _answers(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=3000, **self.client_security()
            )
            try:
                admin.list_topics()
                return True
            finally:
                admin.close()
        except (OSError, KafkaError):
            return False

    def stop(self) -> None:
        """Stop the broker (its data stays for the next start)."""
        if self.process is None:
            return
        stop_group(self.process, timeout=30)
        self.process = None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=REPO / ".alignloop" / "kafka")
    parser.add_argument("--port", type=int, default=9092)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = KafkaBroker(args.data_dir, args.port).start()
    print(f"Kafka broker on {broker.bootstrap}; Ctrl-C stops it", flush=True)
    try:
        broker.process.wait()
    except KeyboardInterrupt:
        broker.stop()


if __name__ == "__main__":
    main()
