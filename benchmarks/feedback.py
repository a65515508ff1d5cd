"""Feedback benchmark: accepted feedback events/s over HTTP.

    .venv/bin/python -m benchmarks.feedback [--events 4000] [--batch 100]

    .venv/bin/python -m benchmarks.feedback --before <git ref>   # also that commit's gateway

The single-event load comes from wrk where it is installed (`make bench-feedback` installs it):
a Python client on the same two cores is slower than the endpoint it measures.

In one run, on one machine, with a real Kafka broker, gateways all up at once and measured in
rounds whose order rotates (so start order and drift favour none):
1. a gateway publishing to Kafka takes ratings through the single-event endpoint and through the
   batch endpoint (concurrent clients; an event counts once the API has acknowledged it, i.e.
   once it is fsync'd in the local log); with --before, an older commit's gateway (a git
   worktree) takes the same load in the same rounds;
2. each gateway first serves a completion load (whose choices are then rated), reported alongside.
What recording completions costs serving is benchmarks/recording.py, one gateway at a time: with
both kept up here, the one recording nothing came out ~2x *slower* in every round, which says more
about two engines sharing the cores than about recording.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks import wrk
from benchmarks.processes import checkout, launch_gateway, log_progress, machine, remove_checkout, stop

KEY = "sk-bench"
MODEL = "alignloop-policy"


async def _concurrently(
    url: str, jobs: list, concurrency: int
) -> tuple[float, list[float], list[httpx.Response]]:
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

    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=300,
        limits=httpx.Limits(max_connections=concurrency),
    ) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - started, sorted(latencies), responses


def _completions(n: int) -> list:
    return [
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "The", "n": 2, "max_tokens": 16, "seed": i, "ignore_eos": True},
        )
        for i in range(n)
    ]


def _latency_summary(wall: float, latencies: list[float], responses: list) -> dict:
    return {
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "failed": sum(r.status_code != 200 for r in responses),
    }


def _ratings(served: list[dict], events: int) -> tuple[list, list]:
    """Single-event rating jobs and batch items over the choices of some served responses."""
    choice_ids = [c["id"] for r in served for c in r["choices"]]
    single = [
        ("/v1/feedback/ratings", {"choice_id": choice_ids[i % len(choice_ids)], "rating": 1})
        for i in range(events)
    ]
    items = [
        {"kind": "rating", "choice_id": choice_ids[i % len(choice_ids)], "rating": -1} for i in range(events)
    ]
    return single, items


def _ingest(url: str, served: list[dict], events: int, batch: int, concurrency: int, client: str) -> dict:
    single, items = _ratings(served, events)
    if client == "wrk":  # as long as httpx would take for `events` at 1,000/s
        out = {
            "single": wrk.post(
                url + "/v1/feedback/ratings",
                [body for _, body in single[:200]],
                KEY,
                concurrency,
                max(5.0, events / 1000),
            )
        }
    else:
        wall, lat, resp = asyncio.run(_concurrently(url, single, concurrency))
        ok = sum(r.status_code == 202 for r in resp)
        out = {
            "single": {
                "events_per_s": ok / wall,
                "p50_ms": 1000 * statistics.median(lat),
                "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
                "accepted": ok,
                "events": events,
            }
        }
    batches = [("/v1/feedback/batch", {"items": items[i : i + batch]}) for i in range(0, events, batch)]
    wall, lat, resp = asyncio.run(_concurrently(url, batches, max(1, concurrency // 4)))
    ok = sum(len(r.json()["accepted"]) for r in resp if r.status_code == 202)
    out["batch"] = {
        "events_per_s": ok / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "accepted": ok,
        "events": events,
    }
    return out


def run(
    model_dir: Path,
    kafka: str,
    events: int,
    batch: int,
    completions: int,
    concurrency: int,
    rounds: int,
    before: Path | None,
    client: str = "httpx",
) -> dict[str, list[dict]]:
    """Per gateway, one measurement per round. Every gateway is up for the whole run and the rounds
    alternate the order, so neither start order nor drift favours one of them."""
    setups = {"recording": (True, None)}
    if before is not None:
        setups["before (recording)"] = (True, before)
    results: dict[str, list[dict]] = {name: [] for name in setups}
    running: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="alignloop-fbench-") as tmp:
        try:
            for i, (name, (recording, code)) in enumerate(setups.items()):
                work = Path(tmp) / f"gw{i}"
                work.mkdir()
                extra = f'[feedback]\nkafka_bootstrap = "{kafka}"\nrecord_completions = {str(recording).lower()}\n'
                print(f"[bench] starting gateway '{name}'" + (f" from {code}" if code else ""), flush=True)
                running[name] = launch_gateway(work, model_dir, KEY, extra, code=code)
                asyncio.run(
                    _concurrently(running[name][1], _completions(2 * concurrency), concurrency)
                )  # warm-up
            for r in range(rounds):
                names = list(setups)
                names = names[r % len(names) :] + names[: r % len(names)]
                for name in names:
                    url = running[name][1]
                    wall, lat, resp = asyncio.run(_concurrently(url, _completions(completions), concurrency))
                    row = {"completions": _latency_summary(wall, lat, resp)}
                    if setups[name][0]:  # feedback needs recorded completions
                        row.update(
                            _ingest(url, [x.json() for x in resp[:50]], events, batch, concurrency, client)
                        )
                    results[name].append(row)
                    print(f"[bench] round {r + 1} {name}: {row}", flush=True)
        finally:
            for proc, _ in running.values():
                stop(proc)
    return results


def _median(rows: list[dict], *path: str) -> float:
    values = []
    for row in rows:
        for key in path:
            row = row[key]
        values.append(row)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="HF checkpoint dir (default: build the tiny model)")
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--completions", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--before",
        metavar="GIT_REF",
        help="also run this git ref's gateway (a worktree), "
        "for feedback ingestion before/after in the same run",
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "httpx"),
        default="wrk" if wrk.available() else "httpx",
        help="the single-event load's client: wrk (default where installed; "
        "deploy/install-bench-tools.sh) or httpx, which on 2 cores measures itself as much as the gateway",
    )
    args = parser.parse_args()

    from core.config import TinyModelConfig
    from deploy.kafka.broker import KafkaBroker
    from synthetic.tiny_model import build_tiny_model

    log_progress()
    with tempfile.TemporaryDirectory(prefix="alignloop-fbench-model-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "tiny", TinyModelConfig())
        broker = KafkaBroker(Path(tmp) / "kafka").start()
        before = checkout(args.before, Path(tmp) / "before") if args.before else None
        try:
            r = run(
                model,
                broker.bootstrap,
                args.events,
                args.batch,
                args.completions,
                args.concurrency,
                args.rounds,
                before,
                args.client,
            )
        finally:
            broker.stop()
            if before is not None:
                remove_checkout(before)
    print(
        f"\nMachine: {machine()}\nKafka: single node, acks=all, on the same machine. "
        f"{args.rounds} rounds, order rotated each round; medians over rounds.\n"
    )
    print(
        "| feedback ingestion | endpoint | events/s | p50 ms | p99 ms | per round (events/s) |\n|---|---|---|---|---|---|"
    )
    for name in [n for n in r if "recording" in n and not n.startswith("not")]:
        for endpoint, how in (
            ("single", f"single event, {args.concurrency} connections ({args.client})"),
            ("batch", f"batch of {args.batch}, {max(1, args.concurrency // 4)} clients"),
        ):
            per = ", ".join(f"{row[endpoint]['events_per_s']:.0f}" for row in r[name])
            print(
                f"| {name} | {how} | {_median(r[name], endpoint, 'events_per_s'):.0f} | "
                f"{_median(r[name], endpoint, 'p50_ms'):.1f} | {_median(r[name], endpoint, 'p99_ms'):.1f} | {per} |"
            )
    if "before (recording)" in r:
        ratio = _median(r["recording"], "single", "events_per_s") / _median(
            r["before (recording)"], "single", "events_per_s"
        )
        print(f"| this / before | single event | {ratio:.2f}x | | | |")
    print(
        f"\n| completions ({args.concurrency} clients, n=2, 16 tokens) | req/s | p50 ms | p99 ms | failed | "
        f"per round (req/s) |\n|---|---|---|---|---|---|"
    )
    for name in r:
        per = ", ".join(f"{row['completions']['requests_per_s']:.1f}" for row in r[name])
        print(
            f"| {name} | {_median(r[name], 'completions', 'requests_per_s'):.2f} | "
            f"{_median(r[name], 'completions', 'p50_ms'):.0f} | {_median(r[name], 'completions', 'p99_ms'):.0f} | "
            f"{sum(row['completions']['failed'] for row in r[name])} | {per} |"
        )


if __name__ == "__main__":
    main()
