"""How long `alignloop serve` takes from its start until /readyz (engine started and warm), for this
checkout and another git ref, in one run: each round starts a fresh gateway of each on the tiny model,
the order alternating over rounds.

    .venv/bin/python -m benchmarks.gateway_start --before REF [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.processes import (
    checkout,
    launch_gateway,
    log_progress,
    machine,
    remove_checkout,
    rotated,
    stop,
)
from core.config import TinyModelConfig
from synthetic.tiny_model import build_tiny_model

KEY = "sk-bench"
log = logging.getLogger("benchmarks.gateway_start")


def main() -> None:
    """Time gateway start-ups of both checkouts and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the git ref to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    log_progress()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model", TinyModelConfig())
        code = {"before": checkout(args.before, work / "before"), "this checkout": None}
        seconds: dict[str, list[float]] = {name: [] for name in code}
        try:
            for r in range(args.rounds):
                for name in rotated(list(code), r):
                    run = work / f"{name.replace(' ', '-')}-{r}"
                    run.mkdir()
                    started = time.monotonic()
                    proc, _ = launch_gateway(run, model, KEY, code=code[name])
                    seconds[name].append(time.monotonic() - started)
                    stop(proc)
                    log.info("round %d: %s ready in %.1f s", r + 1, name, seconds[name][-1])
        finally:
            remove_checkout(work / "before")
    print(f"\nGateway start until /readyz, tiny model, {args.rounds} rounds; {machine()}\n")
    print("| code | median (s) | min (s) | max (s) |\n|---|---|---|---|")
    for name, times in seconds.items():
        label = f"{name} ({args.before})" if name == "before" else name
        print(f"| {label} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |")
    after, before = statistics.median(seconds["this checkout"]), statistics.median(seconds["before"])
    print(f"\nthis checkout / before: {after / before:.2f}x")


if __name__ == "__main__":
    main()
