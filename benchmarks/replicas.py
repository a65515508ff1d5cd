"""Two gateway replicas vs one on the same machine, same model, same load.

    .venv/bin/python -m benchmarks.replicas [--concurrency 32] [--requests 320] [--rounds 2]

Both replicas share one registry and one ownership secret (as behind a load balancer); the
clients spread requests over them round-robin (client-side: what a balancer would do, without
one more process on the two cores). The single-gateway runs use replica A alone. Both setups are
up for the whole run and the rounds alternate, so start order and drift favour neither. Prints
requests/s, generated tokens/s, p50/p99 per round, the medians' ratio and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.processes import launch_gateway, machine, rotated, stop
from benchmarks.serving import KEY, _requests


async def _drive(urls: list[str], bodies: list[dict], concurrency: int) -> dict:
    latencies, tokens, failures = [], 0, 0
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    turn = itertools.cycle(range(len(urls)))

    async def client(https: list[httpx.AsyncClient]) -> None:
        nonlocal tokens, failures
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            r = await https[next(turn)].post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - started)
            if r.status_code == 200:
                tokens += r.json()["usage"]["completion_tokens"]
            else:
                failures += 1

    https = [
        httpx.AsyncClient(
            base_url=u,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=600,
            limits=httpx.Limits(max_connections=concurrency),
        )
        for u in urls
    ]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(client(https) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    finally:
        for h in https:
            await h.aclose()
    latencies.sort()
    return {
        "requests_per_s": len(bodies) / wall,
        "tokens_per_s": tokens / wall,
        "failures": failures,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="HF checkpoint dir (default: build the tiny model)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from core.config import TinyModelConfig
    from synthetic.tiny_model import build_tiny_model

    rows: dict[str, list[dict]] = {"one gateway": [], "two gateways": []}
    with tempfile.TemporaryDirectory(prefix="alignloop-rbench-") as tmp:
        tmp = Path(tmp)
        model = args.model or build_tiny_model(tmp / "tiny", TinyModelConfig())
        shared = f'registry_dir = "{tmp / "registry"}"'
        secret = f'ownership_secrets = ["{secrets.token_hex(32)}"]'
        procs, urls = [], []
        try:
            for name in ("a", "b"):
                (tmp / name).mkdir()
                print(f"[bench] starting replica {name}", flush=True)
                proc, url = launch_gateway(tmp / name, model, KEY, shared, secret)
                procs.append(proc)
                urls.append(url)
            bodies = _requests(args.requests, args.max_tokens)
            asyncio.run(_drive(urls, bodies[: 2 * args.concurrency], args.concurrency))  # warm-up, both
            for r in range(args.rounds):
                for name in rotated(["one gateway", "two gateways"], r):
                    row = asyncio.run(
                        _drive(urls[:1] if name == "one gateway" else urls, bodies, args.concurrency)
                    )
                    rows[name].append(row)
                    print(f"[bench] round {r + 1} {name}: {row}", flush=True)
        finally:
            for p in procs:
                stop(p)
    print(
        f"\nMachine: {machine()}\nLoad: {args.concurrency} closed-loop clients, {args.requests} /v1/completions of "
        f"{args.max_tokens} tokens (ignore_eos), per round; {args.rounds} rounds, order alternating.\n"
    )
    print(
        "| setup | req/s | gen tok/s | p50 ms | p99 ms | failed | per round (req/s) |\n|---|---|---|---|---|---|---|"
    )
    med = {
        n: {
            k: statistics.median(x[k] for x in rs)
            for k in ("requests_per_s", "tokens_per_s", "p50_ms", "p99_ms")
        }
        for n, rs in rows.items()
    }
    for name, rs in rows.items():
        m = med[name]
        print(
            f"| {name} | {m['requests_per_s']:.2f} | {m['tokens_per_s']:.0f} | {m['p50_ms']:.0f} | {m['p99_ms']:.0f} | "
            f"{sum(x['failures'] for x in rs)} | {', '.join(format(x['requests_per_s'], '.2f') for x in rs)} |"
        )
    two, one = med["two gateways"], med["one gateway"]
    print(
        f"| two / one | {two['requests_per_s'] / one['requests_per_s']:.2f}x | "
        f"{two['tokens_per_s'] / one['tokens_per_s']:.2f}x | {two['p50_ms'] / one['p50_ms']:.2f}x | "
        f"{two['p99_ms'] / one['p99_ms']:.2f}x | | |"
    )


if __name__ == "__main__":
    main()
