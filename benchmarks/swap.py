"""Swap benchmark: serving through policy switches under load.

    .venv/bin/python -m benchmarks.swap [--clients 16] [--seconds 48] [--swaps 4]

A gateway serves a closed-loop load while its policy is promoted back and forth between two
versions by moving the registry's CURRENT pointer (what the trainer does). Reported: requests/s
and p99 latency of requests near a swap (from 1 s before to 3 s after) vs the rest (steady
state), failed requests, and, per swap, the time from promotion until every request that starts
is served by the new version. Mode: in place (pause, reload, resume); blue/green is not built.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import load_file, save_file

from alignloop.config import TinyModelConfig
from benchmarks.processes import launch_gateway, machine, stop
from inference.registry import PolicyRegistry

KEY = "sk-bench"
BODY = {"model": "alignloop-policy", "max_tokens": 32, "ignore_eos": True, "temperature": 1.0,
        "messages": [{"role": "user", "content": "Describe a fox."}]}


def _other_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    gen = torch.Generator().manual_seed(1)
    tensors = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in load_file(weights).items()}
    weights.chmod(0o644)
    save_file(tensors, weights, metadata={"format": "pt"})
    return dst


def _client(url: str, stop_at: float, out: list, lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                r = http.post("/v1/chat/completions", json=BODY)
                ok, version = r.status_code == 200, r.headers.get("x-policy-version")
            except httpx.HTTPError:
                ok, version = False, None
            with lock:
                out.append((t0, time.monotonic(), ok, version))


def _window_stats(rows: list) -> dict:
    if not rows:
        return {"requests": 0}
    lat = sorted(e - s for s, e, _, _ in rows)
    span = max(e for _, e, _, _ in rows) - min(s for s, _, _, _ in rows)
    return {"requests": len(rows), "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "span_s": span}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=48)
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--poll", type=float, default=0.25, help="gateway.registry_poll_s")
    args = parser.parse_args()
    from inference.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="alignloop-swap-") as tmp:
        work = Path(tmp)
        base = build_tiny_model(work / "base", TinyModelConfig())
        proc, url = launch_gateway(work, base, KEY, gateway_toml=f"registry_poll_s = {args.poll}")
        try:
            registry = PolicyRegistry(work / "state" / "registry")
            versions = [registry.current(), registry.publish(_other_weights(base, work / "other"), source="bench")]
            rows: list = []
            lock = threading.Lock()
            start = time.monotonic()
            stop_at = start + args.seconds
            threads = [threading.Thread(target=_client, args=(url, stop_at, rows, lock)) for _ in range(args.clients)]
            for t in threads:
                t.start()
            swaps = []
            gap = args.seconds / (args.swaps + 1)
            for i in range(args.swaps):
                time.sleep(max(0.0, start + gap * (i + 1) - time.monotonic()))
                target = versions[(i + 1) % 2]
                swaps.append((time.monotonic(), target))
                registry.set_current(target)
                print(f"[bench] t={time.monotonic() - start:.1f}s: promoted {target}", flush=True)
            for t in threads:
                t.join()
        finally:
            stop(proc)

    # Requests are placed by when they finished: near a swap if within [t - 1 s, t + 3 s] of one.
    near = lambda end: any(t - 1.0 <= end <= t + 3.0 for t, _ in swaps)  # noqa: E731
    around = [r for r in rows if near(r[1])]
    steady = [r for r in rows if not near(r[1])]
    failed = sum(1 for r in rows if not r[2])
    to_full = []
    for i, (t, target) in enumerate(swaps):
        later = swaps[i + 1][0] if i + 1 < len(swaps) else float("inf")
        # Requests that started after this promotion and finished before the next one.
        between = [r for r in rows if t <= r[0] and r[1] < later]
        last_old = max((r[0] for r in between if r[3] != target), default=t)
        to_full.append(last_old - t)
    a, s = _window_stats(around), _window_stats(steady)
    first, last = min(r[0] for r in rows), max(r[1] for r in rows)
    window_time = sum(min(t + 3.0, last) - max(t - 1.0, first) for t, _ in swaps)
    steady_time = (last - first) - window_time
    print(f"\nMachine: {machine()}")
    print(f"Load: {args.clients} clients, chat completions of 32 tokens, {args.seconds:.0f} s, {args.swaps} swaps "
          f"by moving CURRENT (gateway polls it every {args.poll} s); mode: in place.\n")
    print("| window | requests | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    print(f"| steady state | {s['requests']} | {s['requests'] / steady_time:.1f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} |")
    print(f"| around swaps (-1 s..+3 s) | {a['requests']} | {a['requests'] / window_time:.1f} | {a['p50_ms']:.0f} | "
          f"{a['p99_ms']:.0f} |")
    print(f"\nFailed requests: {failed} of {len(rows)}.")
    print("Promotion to 100% of new requests on the new version, per swap (s): "
          + ", ".join(f"{x:.2f}" for x in to_full))


if __name__ == "__main__":
    main()
