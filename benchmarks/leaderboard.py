"""The leaderboard under a flood: 100,000 kept pairwise outcomes, then repeated leaderboard calls.

    .venv/bin/python -m benchmarks.leaderboard [--outcomes 100000] [--before GIT_REF] [--seconds 30]

1. The fit alone, in this process: the leaderboard (Bradley-Terry and 200 bootstrap rounds) from
   the outcomes' bounded pattern counts (promotion/leaderboard.py), and, with --before, the same
   figures from an older commit's gateway/leaderboard.py (its fit over every outcome kept, its
   bootstrap resampling outcomes) on the same outcomes.
2. A real gateway (`alignloop serve`, tiny model) whose evidence store holds those rankings: its
   /healthz latency alone, then while 4 clients call /v1/leaderboard back to back for --seconds
   (the call's latency, and /healthz every 50 ms meanwhile).

The rankings are 9-way, each mixing two of four versions (4 answers of one, 5 of the other: 20
cross-version outcomes each), as a replayed flood of blinded mixed rankings is.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import httpx

from benchmarks.processes import launch_gateway, log_progress, machine, stop
from core.paths import StatePaths
from feedback.events import Comparison
from promotion.evidence import EvidenceStore
from promotion.leaderboard import Outcome, leaderboard

KEY = "sk-bench-leaderboard"
VERSIONS = ["v0001", "v0002", "v0003", "v0004"]
STRENGTH = {"v0001": 0.0, "v0002": 0.4, "v0003": 0.8, "v0004": 1.0}


def rankings(outcomes: int, seed: int = 0) -> list[Comparison]:
    """9-way rankings of two versions' answers (20 cross-version outcomes each), ordered by noisy strength."""
    rng = random.Random(seed)
    out = []
    for i in range(outcomes // 20):
        a, b = rng.sample(VERSIONS, 2)
        choices = {f"c{i}-{j}": a if j < 4 else b for j in range(9)}
        order = sorted(choices, key=lambda c: STRENGTH[choices[c]] + rng.gauss(0, 1.0), reverse=True)
        out.append(
            Comparison(
                request_id=f"r{i}",
                rater=f"person-{i % 500}",
                ranking=[[c] for c in order],
                choice_versions=choices,
                timestamp=1.0 + i,
            )
        )
    return out


def _ms(values: list[float]) -> dict:
    values = sorted(values)
    return {
        "n": len(values),
        "p50": 1000 * statistics.median(values),
        "p99": 1000 * values[int(0.99 * (len(values) - 1))],
        "max": 1000 * values[-1],
    }


def fit_alone(store: EvidenceStore, before: str | None, comparisons: list[Comparison]) -> dict:
    """Seconds for one leaderboard fit, now and (with `before`) at that commit."""
    started = time.perf_counter()
    board = leaderboard(store.patterns(), "v0001", "v0004", 200)
    out = {
        "now_s": time.perf_counter() - started,
        "patterns": len(store.patterns()),
        "outcomes": board["outcomes"],
    }
    if before:
        source = subprocess.run(
            ["git", "show", f"{before}:gateway/leaderboard.py"], capture_output=True, text=True, check=True
        ).stdout
        old = types.ModuleType("old_leaderboard")
        sys.modules[old.__name__] = old  # its dataclasses look their module up there
        # Its one project import moved with this change; the functions are the old ones.
        exec(  # noqa: S102 - this repository's own earlier code, from git, to compare with
            source.replace(
                "from gateway.sequential import wilson", "from promotion.sequential import wilson"
            ),
            old.__dict__,
        )
        outcomes = [
            Outcome(o.winner, o.loser, o.tie)
            for c in comparisons
            for o in old.outcomes_of(c.ranking, c.choice_versions.get)
        ]
        started = time.perf_counter()
        old.leaderboard(outcomes, "v0001", "v0004", 200)
        out["before_s"] = time.perf_counter() - started
    return out


def under_calls(url: str, seconds: float) -> dict:
    """/healthz alone, then during back-to-back leaderboard calls from 4 clients."""
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=600) as http:
        alone = []
        for _ in range(200):
            started = time.perf_counter()
            http.get(f"{url}/healthz")
            alone.append(time.perf_counter() - started)
    calls, during, stop_at = [], [], time.monotonic() + seconds

    def call() -> None:
        with httpx.Client(timeout=600, headers=auth) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                assert http.get(f"{url}/v1/leaderboard").status_code == 200
                calls.append(time.perf_counter() - started)

    def probe() -> None:
        with httpx.Client(timeout=600) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                http.get(f"{url}/healthz")
                during.append(time.perf_counter() - started)
                time.sleep(0.05)

    threads = [threading.Thread(target=call) for _ in range(4)] + [threading.Thread(target=probe)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"healthz_alone": _ms(alone), "leaderboard_call": _ms(calls), "healthz_during": _ms(during)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outcomes", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--before", metavar="GIT_REF", help="also time this commit's leaderboard fit on the same outcomes"
    )
    args = parser.parse_args()
    log_progress()
    with tempfile.TemporaryDirectory(prefix="alignloop-leaderboard-") as tmp:
        work = Path(tmp)
        from core.config import TinyModelConfig
        from synthetic.tiny_model import build_tiny_model

        model = build_tiny_model(work / "tiny", TinyModelConfig())
        comparisons = rankings(args.outcomes)
        store = EvidenceStore(StatePaths(work / "state").evidence)
        store.record_many(comparisons)
        fit = fit_alone(store, args.before, comparisons)
        proc, url = launch_gateway(work, model, KEY)
        try:
            served = under_calls(url, args.seconds)
        finally:
            stop(proc)
    print(f"\nmachine: {machine()}")
    print(
        f"{len(comparisons):,} rankings, {fit['outcomes']:,} outcomes, {fit['patterns']} distinct patterns kept"
    )
    before = f"{fit['before_s']:.2f} s" if "before_s" in fit else "not run (--before GIT_REF)"
    print(
        f"\n| one fit (BT + 200 bootstrap rounds) | now | {args.before or 'before'} |\n|---|---|---|\n"
        f"| seconds | {fit['now_s']:.2f} | {before} |"
    )
    print("\n| gateway | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    for name, row in served.items():
        print(
            f"| {name.replace('_', ' ')} | {row['n']} | {row['p50']:.1f} | {row['p99']:.1f} | {row['max']:.1f} |"
        )


if __name__ == "__main__":
    main()
