"""Feedback benchmark: accepted feedback events/s over HTTP, and what recording costs serving.

    .venv/bin/python -m benchmarks.feedback [--events 4000] [--batch 100]

In one run, on one machine, with a real Kafka broker:
1. a gateway publishing to Kafka takes ratings through the single-event endpoint and through the
   batch endpoint (concurrent clients; an event counts once the API has acknowledged it);
2. the same completion load runs against a gateway that records every served completion for
   Kafka and against one that records nothing; the difference in latency is the cost of
   publishing on the completion path.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.processes import launch_gateway, machine, stop

KEY = "sk-bench"
MODEL = "alignloop-policy"


async def _concurrently(url: str, jobs: list, concurrency: int) -> tuple[float, list[float], list[httpx.Response]]:
    """Run (path, body) jobs with `concurrency` clients; returns wall time, latencies, responses."""
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies, responses = [], []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            path, body = queue.get_nowait()
            t = time.perf_counter()
            r = await http.post(path, json=body)
            latencies.append(time.perf_counter() - t)
            responses.append(r)

    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - started, sorted(latencies), responses


def _completions(n: int) -> list:
    return [("/v1/completions", {"model": MODEL, "prompt": "The", "n": 2, "max_tokens": 16, "seed": i, "ignore_eos": True})
            for i in range(n)]


def _latency_summary(wall: float, latencies: list[float], responses: list) -> dict:
    return {"requests_per_s": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "failed": sum(r.status_code != 200 for r in responses)}


def run(model_dir: Path, kafka: str, events: int, batch: int, completions: int, concurrency: int) -> dict:
    """All measurements of one run."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="alignloop-fbench-") as tmp:
        for recording in (True, False):
            work = Path(tmp) / f"record-{recording}"
            work.mkdir()
            extra = (f'[feedback]\nkafka_bootstrap = "{kafka}"\nrecord_completions = {str(recording).lower()}\n')
            print(f"[bench] starting a gateway, recording completions: {recording}", flush=True)
            proc, url = launch_gateway(work, model_dir, KEY, extra)
            try:
                asyncio.run(_concurrently(url, _completions(2 * concurrency), concurrency))  # warm-up
                wall, lat, resp = asyncio.run(_concurrently(url, _completions(completions), concurrency))
                out["completions_recorded" if recording else "completions_unrecorded"] = _latency_summary(wall, lat, resp)
                print(f"[bench] completions (recording={recording}): {out['completions_recorded' if recording else 'completions_unrecorded']}", flush=True)
                if not recording:
                    continue
                served = [r.json() for r in resp[:50]]
                choice_ids = [c["id"] for r in served for c in r["choices"]]
                ratings = [("/v1/feedback/ratings", {"choice_id": choice_ids[i % len(choice_ids)], "rating": 1})
                           for i in range(events)]
                wall, lat, resp = asyncio.run(_concurrently(url, ratings, concurrency))
                ok = sum(r.status_code == 202 for r in resp)
                out["single"] = {"events_per_s": ok / wall, "p50_ms": 1000 * statistics.median(lat),
                                 "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "accepted": ok, "events": events}
                print(f"[bench] single-event endpoint: {out['single']}", flush=True)
                items = [{"kind": "rating", "choice_id": choice_ids[i % len(choice_ids)], "rating": -1}
                         for i in range(events)]
                batches = [("/v1/feedback/batch", {"items": items[i:i + batch]}) for i in range(0, events, batch)]
                wall, lat, resp = asyncio.run(_concurrently(url, batches, max(1, concurrency // 4)))
                ok = sum(len(r.json()["accepted"]) for r in resp if r.status_code == 202)
                out["batch"] = {"events_per_s": ok / wall, "p50_ms": 1000 * statistics.median(lat),
                                "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "accepted": ok, "events": events,
                                "batch": batch}
                print(f"[bench] batch endpoint: {out['batch']}", flush=True)
            finally:
                stop(proc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF checkpoint dir (default: build the tiny model)")
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--completions", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    import logging

    from core.config import TinyModelConfig
    from deploy.kafka.broker import KafkaBroker
    from synthetic.tiny_model import build_tiny_model

    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory(prefix="alignloop-fbench-model-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "tiny", TinyModelConfig())
        broker = KafkaBroker(Path(tmp) / "kafka").start()
        try:
            r = run(model, broker.bootstrap, args.events, args.batch, args.completions, args.concurrency)
        finally:
            broker.stop()
    rec, unrec = r["completions_recorded"], r["completions_unrecorded"]
    print(f"\nMachine: {machine()}\nKafka: single node, acks=all, on the same machine.\n")
    print("| measurement | events/s | p50 ms | p99 ms |\n|---|---|---|---|")
    print(f"| feedback, single-event endpoint ({args.concurrency} clients) | {r['single']['events_per_s']:.0f} | "
          f"{r['single']['p50_ms']:.1f} | {r['single']['p99_ms']:.1f} |")
    print(f"| feedback, batch endpoint ({args.batch}/request, {max(1, args.concurrency // 4)} clients) | "
          f"{r['batch']['events_per_s']:.0f} | {r['batch']['p50_ms']:.1f} | {r['batch']['p99_ms']:.1f} |")
    print(f"\n| completions ({args.concurrency} clients, n=2, 16 tokens) | req/s | p50 ms | p99 ms | failed |\n|---|---|---|---|---|")
    print(f"| recording every completion for Kafka | {rec['requests_per_s']:.2f} | {rec['p50_ms']:.0f} | {rec['p99_ms']:.0f} | {rec['failed']} |")
    print(f"| recording nothing | {unrec['requests_per_s']:.2f} | {unrec['p50_ms']:.0f} | {unrec['p99_ms']:.0f} | {unrec['failed']} |")
    print(f"| recorded / unrecorded | {rec['requests_per_s'] / unrec['requests_per_s']:.3f}x | "
          f"{rec['p50_ms'] / unrec['p50_ms']:.3f}x | {rec['p99_ms'] / unrec['p99_ms']:.3f}x | |")


if __name__ == "__main__":
    main()
