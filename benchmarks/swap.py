"""Swap benchmark: serving through policy switches under load, in every way a version can change,
and while a canary runs.

    .venv/bin/python -m benchmarks.swap [--clients 16] [--swaps 3] [--modes in_place,blue_green,adapter]

For each mode, a gateway serves a closed-loop load while its policy is promoted back and forth
between two versions by moving the registry's CURRENT pointer (what the trainer does). The two
versions are the same two LoRA-trained policies in every mode: merged into full weights for
`in_place` and `blue_green` (engine.swap_mode), as adapters on the base on one engine for `adapter`
(engine.enable_lora). A swap is complete once a request that started after the promotion is served
by the new version; the next one comes `--settle` seconds later. Then the other version runs as a
canary taking half the requests for `--canary-s` seconds: a second engine for merged versions, a
second adapter on the same engine for `adapter`.

Reported per mode: requests/s and p99 latency of requests that finished during a swap (from 1 s
before the promotion to 3 s after it completed) vs the rest (steady state), failed requests, per
swap the time from promotion until every request that starts is served by the new version and the
gateway's own switch time (alignloop_policy_swap_seconds); and requests/s and p99 while the canary ran.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.lora_swap import make_adapters
from benchmarks.processes import launch_gateway, machine, stop
from core.config import LoRAConfig, TinyModelConfig
from registry.store import PolicyRegistry

KEY, ADMIN = "sk-bench", "sk-bench-admin"
LORA = LoRAConfig(enabled=True, r=8, alpha=16)
BODY = {
    "model": "alignloop-policy",
    "max_tokens": 32,
    "ignore_eos": True,
    "temperature": 1.0,
    "messages": [{"role": "user", "content": "Describe a fox."}],
}


def _client(url: str, stop: threading.Event, out: list, lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as http:
        while not stop.is_set():
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
    return {
        "requests": len(rows),
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "span_s": span,
    }


def _switch_seconds(url: str, mode: str) -> float:
    """The gateway's own switch time so far (the sum of alignloop_policy_swap_seconds) for `mode`."""
    method = "canary_promoted" if mode == "canary" else mode
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'alignloop_policy_swap_seconds_sum{{mode="{method}"}}'):
            return float(line.split()[-1])
    return 0.0


def _serving(url: str, version: str) -> None:
    """Wait until the gateway serves `version`."""
    deadline = time.monotonic() + 600
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        while admin.get("/admin/versions").json()["serving"] != version:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{version} not served 600 s after it was made current")
            time.sleep(0.2)


def run_mode(mode: str, base: Path, pairs: list[tuple[Path, Path]], work: Path, args) -> dict:
    """Load one gateway in `mode` through `args.swaps` promotions and a canary; returns the rows,
    the swap times and the canary's window."""
    work.mkdir()
    engine = f'[engine]\nswap_mode = "{"in_place" if mode == "adapter" else mode}"\n'
    engine += f"enable_lora = true\nmax_lora_rank = {LORA.r}\n" if mode == "adapter" else ""
    proc, url = launch_gateway(
        work, base, KEY, gateway_toml=f"registry_poll_s = {args.poll}", extra_toml=engine, admin_key=ADMIN
    )
    try:
        registry = PolicyRegistry(work / "state" / "registry")
        first = registry.current()
        if mode == "adapter":
            versions = [registry.publish(a, source="bench", base=first) for a, _ in pairs]
        else:
            versions = [registry.publish(m, source="bench") for _, m in pairs]
        registry.set_current(versions[0])
        _serving(url, versions[0])
        switched = []
        rows: list = []
        lock, stop_load = threading.Lock(), threading.Event()
        threads = [
            threading.Thread(target=_client, args=(url, stop_load, rows, lock)) for _ in range(args.clients)
        ]
        start = time.monotonic()
        for t in threads:
            t.start()
        swaps = []
        time.sleep(args.settle)
        for i in range(args.swaps):
            target = versions[(i + 1) % 2]
            before = _switch_seconds(url, mode)
            promoted = time.monotonic()
            registry.set_current(target)
            print(f"[bench] {mode} t={promoted - start:.1f}s: promoted {target}", flush=True)
            # Complete once a request that started after the promotion comes back from the target.
            while True:
                with lock:
                    done = any(r[0] >= promoted and r[3] == target for r in rows)
                if done:
                    break
                if time.monotonic() - promoted > 600:
                    raise RuntimeError(
                        f"{mode}: {target} not served 600 s after promotion; see {work}/gateway.log"
                    )
                time.sleep(0.05)
            print(f"[bench] {mode} t={time.monotonic() - start:.1f}s: serving {target}", flush=True)
            swaps.append((promoted, target))
            switched.append(_switch_seconds(url, mode) - before)
            time.sleep(args.settle)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=900) as admin:
            other = versions[(args.swaps + 1) % 2]  # the version not serving now
            asked = time.monotonic()
            r = admin.post("/admin/canary", json={"version": other, "fraction": 0.5})
            r.raise_for_status()
            canary_from = time.monotonic()
            print(f"[bench] {mode}: canary {other} running after {canary_from - asked:.1f}s", flush=True)
            time.sleep(args.canary_s)
            canary_to = time.monotonic()
            admin.delete("/admin/canary").raise_for_status()
        stop_load.set()
        for t in threads:
            t.join()
    finally:
        stop(proc)
    to_full = []
    for i, (t, target) in enumerate(swaps):
        later = swaps[i + 1][0] if i + 1 < len(swaps) else asked  # the canary serves both after that
        between = [r for r in rows if t <= r[0] and r[1] < later]
        last_old = max((r[0] for r in between if r[3] != target), default=t)
        to_full.append(last_old - t)
    return {
        "rows": [r for r in rows if r[1] < asked],
        "swaps": [(t, t + d) for (t, _), d in zip(swaps, to_full)],
        "to_full": to_full,
        "switched": switched,
        "canary": _window_stats([r for r in rows if canary_from <= r[0] and r[1] <= canary_to]),
        "canary_start_s": canary_from - asked,
        "canary_failed": sum(1 for r in rows if r[0] >= asked and not r[2]),
    }


def report(mode: str, result: dict) -> str:
    """One mode's table row pair, failures and promotion-to-100% times."""
    rows, windows = result["rows"], [(t - 1.0, done + 3.0) for t, done in result["swaps"]]
    near = lambda end: any(a <= end <= b for a, b in windows)  # noqa: E731
    around = [r for r in rows if near(r[1])]
    steady = [r for r in rows if not near(r[1])]
    first, last = min(r[0] for r in rows), max(r[1] for r in rows)
    window_time = sum(min(b, last) - max(a, first) for a, b in windows)
    steady_time = (last - first) - window_time
    a, s = _window_stats(around), _window_stats(steady)
    failed = sum(1 for r in rows if not r[2])
    ratio = (a["requests"] / window_time) / (s["requests"] / steady_time)
    return (
        f"| {mode} | steady state | {s['requests']} | {s['requests'] / steady_time:.1f} | {s['p50_ms']:.0f} | "
        f"{s['p99_ms']:.0f} | | |\n"
        f"| {mode} | during swaps | {a['requests']} | {a['requests'] / window_time:.1f} | {a['p50_ms']:.0f} | "
        f"{a['p99_ms']:.0f} | {failed} of {len(rows)} | "
        + ", ".join(f"{x:.2f}" for x in result["to_full"])
        + " | "
        + ", ".join(f"{x:.3f}" for x in result["switched"])
        + f" |\n"
        f"| {mode} | during / steady | | {ratio:.2f}x | | {a['p99_ms'] / s['p99_ms']:.2f}x | | | |"
    )


def canary_report(mode: str, result: dict) -> str:
    """One mode's row of the canary table."""
    c = result["canary"]
    engines = "1 engine, 2 adapters" if mode == "adapter" else "2 engines"
    return (
        f"| {mode} | {engines} | {result['canary_start_s']:.2f} | {c['requests']} | "
        f"{c['requests'] / c['span_s']:.1f} | {c['p50_ms']:.0f} | {c['p99_ms']:.0f} | {result['canary_failed']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of steady load around swaps")
    parser.add_argument("--modes", default="in_place,blue_green,adapter")
    parser.add_argument("--poll", type=float, default=0.25, help="gateway.registry_poll_s")
    parser.add_argument("--canary-s", type=float, default=30.0, help="seconds of load while a canary runs")
    parser.add_argument("--base", type=Path, help="a tiny-model checkpoint to use (default: build one)")
    args = parser.parse_args()
    from synthetic.tiny_model import build_tiny_model

    results = {}
    with tempfile.TemporaryDirectory(prefix="alignloop-swap-") as tmp:
        work = Path(tmp)
        base = args.base or build_tiny_model(work / "base", TinyModelConfig())
        pairs = make_adapters(base, work, 2, LORA)
        for mode in args.modes.split(","):
            results[mode] = run_mode(mode, base, pairs, work / mode, args)

    print(f"\nMachine: {machine()}")
    print(
        f"Load: {args.clients} closed-loop clients, chat completions of 32 tokens; {args.swaps} swaps per mode "
        f"by moving CURRENT (gateway polls it every {args.poll} s), {args.settle:.0f} s of steady load between."
    )
    print("'During swaps': requests that finished from 1 s before a promotion to 3 s after it completed.\n")
    print(
        "| mode | window | requests | req/s | p50 ms | p99 ms | failed | promotion to 100% new (s) "
        "| the gateway's switch (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, result in results.items():
        print(report(mode, result))
    print(f"\nA canary of the other version taking half the requests, {args.canary_s:.0f} s of load:\n")
    print("| mode | canary on | canary start (s) | requests | req/s | p50 ms | p99 ms | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, result in results.items():
        print(canary_report(mode, result))


if __name__ == "__main__":
    main()
