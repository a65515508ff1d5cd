"""How fast can the load generator go? The same gateway (with Kafka), the same 16 connections, two
clients: httpx's async client (what benchmarks/serving.py and the batch load use) and wrk.

    .venv/bin/python -m benchmarks.load_clients [--seconds 10]

`GET /healthz` does almost nothing, so its rate is the client's ceiling on these cores; single
ratings (`POST /v1/feedback/ratings`, each fsync'd before the answer) show what that ceiling does to
a feedback measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import wrk
from benchmarks.feedback import KEY, _completions, _concurrently
from benchmarks.processes import launch_gateway, machine, stop


async def _httpx(url: str, path: str, body: dict | None, connections: int, seconds: float) -> float:
    """2xx responses/s from `connections` httpx clients sending the same request for `seconds`."""
    ok = 0
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal ok
        while time.perf_counter() < deadline:
            r = await (http.post(path, json=body) if body is not None else http.get(path))
            ok += r.is_success

    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
        limits=httpx.Limits(max_connections=connections),
    ) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(connections)))
        return ok / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not wrk.available():
        raise SystemExit("wrk is not installed: run `bash deploy/install-bench-tools.sh`")
    from core.config import TinyModelConfig
    from deploy.kafka.broker import KafkaBroker
    from synthetic.tiny_model import build_tiny_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="alignloop-clients-") as tmp:
        model = build_tiny_model(Path(tmp) / "tiny", TinyModelConfig())
        broker = KafkaBroker(Path(tmp) / "kafka").start()
        (Path(tmp) / "gw").mkdir()
        proc, url = launch_gateway(
            Path(tmp) / "gw", model, KEY, f'[feedback]\nkafka_bootstrap = "{broker.bootstrap}"\n'
        )
        try:
            _, _, served = asyncio.run(_concurrently(url, _completions(8), 8))
            rating = {"choice_id": served[0].json()["choices"][0]["id"], "rating": 1}
            for path, body in (("/healthz", None), ("/v1/feedback/ratings", rating)):
                via_httpx = asyncio.run(_httpx(url, path, body, args.connections, args.seconds))
                via_wrk = wrk.post(url + path, [body] if body else None, KEY, args.connections, args.seconds)
                rows.append((path, via_httpx, via_wrk["events_per_s"]))
                print(
                    f"[clients] {path}: httpx {via_httpx:.0f}/s, wrk {via_wrk['events_per_s']:.0f}/s",
                    flush=True,
                )
        finally:
            stop(proc)
            broker.stop()
    print(
        f"\nMachine: {machine()}\n{args.connections} connections, {args.seconds:g} s each, one gateway with Kafka.\n"
    )
    print("| request | httpx (2xx/s) | wrk (2xx/s) | wrk / httpx |\n|---|---|---|---|")
    for path, a, b in rows:
        print(f"| {'GET' if path == '/healthz' else 'POST'} {path} | {a:.0f} | {b:.0f} | {b / a:.1f}x |")


if __name__ == "__main__":
    main()
