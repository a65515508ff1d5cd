"""What recording served completions costs serving: the same completion load on a gateway that
records every served completion for Kafka and on one that records nothing.

    .venv/bin/python -m benchmarks.recording [--rounds 4] [--completions 400]

One gateway at a time (so the two never share the cores or vLLM's CPU binding), each started fresh
and warmed up, in an order rotated each round (with two setups, recording first in odd rounds), with
a real Kafka broker. Earlier runs that kept both gateways up at once, or started each once, reported
recording as 1.17x, 1.88x and 1.65x *faster*.

With --waker, a third setup: not recording, with a process beside the gateway that only wakes up
every 0.5 ms. It tests one explanation of those runs: that recording's extra threads keep this
virtual machine's vCPUs from idling between engine steps, and that an idle vCPU is slow to wake.

Also timed in this process: what recording adds to a request on the event loop (building the event
and handing it to the spool's writer; the fsync and the Kafka send happen on other threads), for
the same shape of completion (n=2 x 16 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.feedback import KEY, _completions, _concurrently, _latency_summary
from benchmarks.processes import launch_gateway, log_progress, machine, rotated, stop

SETUPS = {"recording": True, "not recording": False}
WAKER = "not recording, with a waker"  # --waker: records nothing; a process beside it wakes every 0.5 ms
_WAKER_CODE = "import time\nwhile True: time.sleep(0.0005)"


def run(
    model_dir: Path, kafka: str, completions: int, concurrency: int, rounds: int, waker: bool = False
) -> dict[str, list[dict]]:
    """One measurement per setup per round; each from a freshly started gateway."""
    setups = SETUPS | ({WAKER: False} if waker else {})
    names = list(setups)
    results: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="alignloop-rbench-") as tmp:
        for r in range(rounds):
            for name in rotated(names, r):
                work = Path(tmp) / f"{r}-{names.index(name)}"
                work.mkdir()
                extra = f'[feedback]\nkafka_bootstrap = "{kafka}"\nrecord_completions = {str(setups[name]).lower()}\n'
                proc, url = launch_gateway(work, model_dir, KEY, extra)
                neighbour = subprocess.Popen([sys.executable, "-c", _WAKER_CODE]) if name == WAKER else None
                try:
                    asyncio.run(_concurrently(url, _completions(2 * concurrency), concurrency))  # warm-up
                    row = _latency_summary(
                        *asyncio.run(_concurrently(url, _completions(completions), concurrency))
                    )
                finally:
                    if neighbour is not None:
                        neighbour.kill()
                        neighbour.wait()
                    stop(proc)
                results[name].append(row)
                print(
                    f"[bench] round {r + 1}/{rounds} {name}: {row['requests_per_s']:.2f} req/s, "
                    f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, {row['failed']} failed",
                    flush=True,
                )
    return results


def request_path_cost_us(calls: int = 2000) -> list[float]:
    """Microseconds per served completion that recording takes on the request path (5 repeats)."""
    from prometheus_client import CollectorRegistry

    from core.config import FeedbackConfig
    from feedback.events import CompletionServed, ServedChoice
    from feedback.recorder import FeedbackRecorder

    text = "The quick brown fox jumps over the lazy dog again"  # ~16 tokens of the tiny model
    with tempfile.TemporaryDirectory(prefix="alignloop-rbench-spool-") as tmp:
        recorder = FeedbackRecorder(FeedbackConfig(), Path(tmp) / "spool.db", CollectorRegistry())
        try:
            repeats = []
            for _ in range(5):
                started = time.perf_counter()
                for i in range(calls):
                    recorder.record_completion(
                        CompletionServed(
                            request_id=f"cmpl-{i}",
                            route="completions",
                            prompt="The",
                            prompt_text="The",
                            prompt_tokens=1,
                            choices=[
                                ServedChoice(
                                    choice_id=f"cmpl-{i}-{j}.sig",
                                    text=text,
                                    completion_tokens=16,
                                    finish_reason="length",
                                )
                                for j in range(2)
                            ],
                            sampling={"n": 2, "max_tokens": 16, "temperature": 1.0},
                            policy_version="v0001",
                            caller="bench",
                        )
                    )
                repeats.append(1e6 * (time.perf_counter() - started) / calls)
        finally:
            recorder.close()
    return repeats


def table(results: dict[str, list[dict]], args) -> str:
    """Medians per setup, every round's figure, and recorded / not recorded."""
    med = {
        name: {k: statistics.median(row[k] for row in rows) for k in ("requests_per_s", "p50_ms", "p99_ms")}
        for name, rows in results.items()
    }
    lines = [
        f"Machine: {machine()}",
        f"{args.concurrency} clients, {args.completions} requests of n=2 x 16 tokens per measurement; "
        f"{args.rounds} rounds, one gateway at a time, order rotating each round; medians over rounds.",
        "",
        "| completions | req/s | p50 ms | p99 ms | failed | per round (req/s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        per = ", ".join(f"{row['requests_per_s']:.1f}" for row in rows)
        lines.append(
            f"| {name} | {med[name]['requests_per_s']:.2f} | {med[name]['p50_ms']:.0f} | "
            f"{med[name]['p99_ms']:.0f} | {sum(row['failed'] for row in rows)} | {per} |"
        )
    a, b = med["recording"], med["not recording"]
    lines.append(
        f"| recording / not recording | {a['requests_per_s'] / b['requests_per_s']:.3f}x | "
        f"{a['p50_ms'] / b['p50_ms']:.3f}x | {a['p99_ms'] / b['p99_ms']:.3f}x | | |"
    )
    cost = request_path_cost_us()
    lines.append(
        f"\nOn the request path, recording one such completion (event + hand-off): median "
        f"{statistics.median(cost):.1f} us over 5 x 2,000 calls ({', '.join(f'{c:.1f}' for c in cost)})."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="HF checkpoint dir (default: build the tiny model)")
    parser.add_argument("--completions", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--waker",
        action="store_true",
        help="add a third setup: not recording, beside a process that wakes every 0.5 ms",
    )
    args = parser.parse_args()
    from core.config import TinyModelConfig
    from deploy.kafka.broker import KafkaBroker
    from synthetic.tiny_model import build_tiny_model

    log_progress()
    with tempfile.TemporaryDirectory(prefix="alignloop-rbench-model-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "tiny", TinyModelConfig())
        broker = KafkaBroker(Path(tmp) / "kafka").start()
        try:
            results = run(
                model, broker.bootstrap, args.completions, args.concurrency, args.rounds, args.waker
            )
        finally:
            broker.stop()
    print("\n" + table(results, args))


if __name__ == "__main__":
    main()
