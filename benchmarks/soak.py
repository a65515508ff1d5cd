"""Soak: gateway + trainer + Kafka on loopback under mixed load for a bounded time, with faults.

    .venv/bin/python -m benchmarks.soak [--minutes 10]

Load (closed loop): completions, streams, streams abandoned after the first chunk, and rankings
with idempotency keys (retried through 503s and connection errors until accepted). Meanwhile the
trainer runs rounds on what users rank, an operator swaps versions in both modes, and the Kafka
broker is restarted half-way. Reported: requests by kind and status (5xx must be 0), feedback events
accepted vs distinct events in Kafka (must be equal), and the RSS of each process (with its
children) after warm-up and at the end (growth should stay under 10%).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import torch
from safetensors.torch import load_file, save_file

from benchmarks.processes import launch, machine, stop
from core.config import TinyModelConfig
from core.processes import free_ports
from registry.store import PolicyRegistry

KEY, ADMIN = "sk-soak-user-0123456789", "sk-soak-admin-0123456789"
MODEL = "alignloop-policy"
PROMPTS = [f"Describe a {a}." for a in ("cat", "dog", "bird", "fish", "horse", "cow", "fox")]


def _perturbed(src: Path, dst: Path, seed: int) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    gen = torch.Generator().manual_seed(seed)
    save_file(
        {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in load_file(weights).items()},
        weights,
        metadata={"format": "pt"},
    )
    return dst


class Load:
    """Client threads of every kind; counts what they saw."""

    def __init__(self, url: str):
        self.url, self.stop = url, threading.Event()
        self.statuses: Counter = Counter()
        self.accepted: set[str] = set()
        self.lock = threading.Lock()

    def _note(self, kind: str, status) -> None:
        with self.lock:
            self.statuses[(kind, status)] += 1

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                kind = ("completion", "stream", "abandoned", "ranked")[i % 4]
                body = {
                    "model": MODEL,
                    "n": 4 if kind == "ranked" else 2,
                    "max_tokens": 24,
                    "temperature": 1.0,
                    "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                }
                try:
                    if kind in ("stream", "abandoned"):
                        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                            for j, _ in enumerate(r.iter_lines()):
                                if kind == "abandoned" and j == 0:
                                    break  # hang up mid-stream
                        self._note(kind, r.status_code)
                        continue
                    r = c.post("/v1/chat/completions", json=body)
                    self._note(kind, r.status_code)
                    if kind == "ranked" and r.status_code == 200:
                        ids = [ch["id"] for ch in r.json()["choices"]]
                        rng.shuffle(ids)
                        self._rank(c, ids, f"soak-{n}-{i}")
                except httpx.TransportError as exc:
                    self._note(kind, type(exc).__name__)

    def _rank(self, c: httpx.Client, ids: list[str], key: str) -> None:
        while not self.stop.is_set():
            try:
                r = c.post(
                    "/v1/feedback/rankings",
                    json={"ranking": [ids[0], ids[1:3], ids[3]], "idempotency_key": key},
                )
            except httpx.TransportError as exc:
                self._note("feedback", type(exc).__name__)
                time.sleep(0.5)
                continue
            self._note("feedback", r.status_code)
            if r.status_code in (200, 202):
                with self.lock:
                    self.accepted.add(r.json()["event_id"])
                return
            if r.status_code != 503:
                return
            time.sleep(0.5)

    def start(self, clients: int) -> list[threading.Thread]:
        """Start the client threads."""
        threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]
        for t in threads:
            t.start()
        return threads


def rss_mib(proc: subprocess.Popen) -> float:
    """Resident memory of a process and all its children, MiB."""
    try:
        p = psutil.Process(proc.pid)
        return sum(x.memory_info().rss for x in [p, *p.children(recursive=True)]) / 2**20
    except psutil.Error:
        return float("nan")


def kafka_event_ids(bootstrap: str) -> set[str]:
    """Distinct feedback event ids on the feedback topic."""
    from kafka import KafkaConsumer, TopicPartition

    from feedback.events import parse_event
    from feedback.topics import FEEDBACK

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(FEEDBACK, p) for p in consumer.partitions_for_topic(FEEDBACK) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out = set()
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=1000).values():
                out.update(parse_event(r.value).event_id for r in records)
        return out
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--swap-every-s", type=float, default=90.0)
    parser.add_argument(
        "--work-dir", type=Path, help="keep state and logs here (default: a temporary folder)"
    )
    args = parser.parse_args()
    from deploy.kafka.broker import KafkaBroker
    from synthetic.corpus import pretraining_texts
    from synthetic.tiny_model import build_tiny_model
    from trainer.data import write_jsonl

    with tempfile.TemporaryDirectory(prefix="alignloop-soak-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_tiny_model(work / "tiny", TinyModelConfig(pretrain_steps=120, corpus_examples=3000))
        registry = PolicyRegistry(work / "state" / "registry")
        registry.publish(model, source="tiny-model", make_current=True)
        registry.publish(_perturbed(model, work / "v2", 2), source="soak:perturbed", parent="v0001")
        write_jsonl(
            work / "state" / "data" / "pretraining.jsonl", ({"text": t} for t in pretraining_texts(512, 0))
        )
        broker = KafkaBroker(work / "kafka").start()
        port, metrics_port = free_ports(2)
        config = work / "soak.toml"
        config.write_text(
            f'state_dir = "{work / "state"}"\n[gateway]\nport = {port}\nlog_level = "warning"\n'
            f'api_keys = [{{ key = "{KEY}", name = "soak", role = "user" }}, '
            f'{{ key = "{ADMIN}", name = "ops", role = "admin" }}]\n'
            f'[feedback]\nkafka_bootstrap = "{broker.bootstrap}"\nkafka_timeout_s = 3\n'
            f"[engine]\nmax_model_len = 256\n"
            f"[train.loop]\nmin_new_comparisons = 40\nrm_max_steps = 30\nmetrics_port = {metrics_port}\n"
            f"[train.ppo]\niterations = 4\nrollout_batch = 8\nminibatch = 4\nmax_new_tokens = 16\n"
            f'rollout_engine = "transformers"\nsave_every = 0\n'
        )
        url = f"http://127.0.0.1:{port}"
        gateway = launch(
            [sys.executable, "-m", "alignloop", "serve", "--config", str(config)],
            work / "gateway.log",
            url,
            "/readyz",
            KEY,
        )
        trainer = launch(
            [sys.executable, "-m", "alignloop", "trainer", "--config", str(config)],
            work / "trainer.log",
            f"http://127.0.0.1:{metrics_port}",
            "/metrics",
            KEY,
        )
        load = Load(url)
        threads = load.start(args.clients)
        try:
            report = soak(load, broker, url, gateway, trainer, args)
        finally:
            load.stop.set()
            for t in threads:
                t.join(300)
            stop(trainer)
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and "alignloop_spool_events 0.0" not in httpx.get(f"{url}/metrics").text
        ):
            time.sleep(1)
        stop(gateway)
        in_kafka = kafka_event_ids(broker.bootstrap)
        broker.stop()
    report["accepted"], report["in_kafka"] = len(load.accepted), len(load.accepted & in_kafka)
    report["statuses"] = {f"{k} {s}": n for (k, s), n in sorted(load.statuses.items(), key=str)}
    print_report(report, args)


def soak(load: Load, broker, url: str, gateway, trainer, args) -> dict:
    """Run the faults on a timeline; returns the memory readings and what was done."""
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600)
    time.sleep(60)  # warm-up: engines, caches, the first rounds of traffic
    rss = {"gateway": [rss_mib(gateway)], "trainer": [rss_mib(trainer)], "kafka": [rss_mib(broker.process)]}
    started, swaps, restarted = time.monotonic(), [], False
    end = started + 60 * args.minutes
    next_swap = started + args.swap_every_s
    while time.monotonic() < end:
        time.sleep(1)
        if not restarted and time.monotonic() > started + 30 * args.minutes:
            broker.stop()
            time.sleep(15)
            broker.start()
            restarted = True
        if time.monotonic() > next_swap:
            versions = admin.get("/admin/versions").json()
            other = next(
                v["name"] for v in reversed(versions["versions"]) if v["name"] != versions["serving"]
            )
            mode = ("in_place", "blue_green")[len(swaps) % 2]
            r = admin.post("/admin/policy", json={"version": other, "mode": mode})
            swaps.append((mode, r.status_code, r.json().get("method")))
            next_swap = time.monotonic() + args.swap_every_s
    rss["gateway"].append(rss_mib(gateway))
    rss["trainer"].append(rss_mib(trainer))
    rss["kafka"].append(rss_mib(broker.process))
    rounds = [v for v in admin.get("/admin/versions").json()["versions"] if v["source"] == "trainer"]
    return {
        "rss": rss,
        "swaps": swaps,
        "broker_restarted": restarted,
        "rounds": len(rounds),
        "minutes": args.minutes,
    }


def print_report(r: dict, args) -> None:
    """The figures as Markdown."""
    print(
        f"\nMachine: {machine()}\nSoak: {args.minutes:g} minutes after a 60 s warm-up, {args.clients} clients; "
        f"swaps {r['swaps']}; broker restarted: {r['broker_restarted']}; trainer rounds published: {r['rounds']}\n"
    )
    print("| kind status | requests |\n|---|---|")
    for name, n in r["statuses"].items():
        print(f"| {name} | {n} |")
    fivexx = sum(
        n for name, n in r["statuses"].items() if name.split()[-1].startswith("5") and "503" not in name
    )
    print(f"\nserver errors (5xx other than 503 + Retry-After): {fivexx}")
    print(f"feedback events accepted: {r['accepted']}; of them in Kafka (distinct): {r['in_kafka']}\n")
    print("| process | RSS after warm-up MiB | RSS at end MiB | growth |\n|---|---|---|---|")
    for name, (a, b) in r["rss"].items():
        print(f"| {name} (with children) | {a:.0f} | {b:.0f} | {100 * (b - a) / a:+.1f}% |")
    print("\n" + json.dumps(r))


if __name__ == "__main__":
    main()
