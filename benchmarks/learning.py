"""Learning ablation: `alignloop experiment` once per variant, on the same seeds, into one table.

Each variant changes one thing against the demo's defaults (alignloop/demo.py: DEMO_SETTINGS);
every run is the trainer's own round code on simulated raters (alignloop/experiment.py), run
through the command line as a user would.

    make bench-learning                                       # every variant, seeds 0 1 2, 3 rounds
    .venv/bin/python -m benchmarks.learning --seeds 0 1 2 3 4 --rounds 4 --only defaults "PPO 12 iterations"

Writes <out>/<variant>/ (each run's table, rounds.jsonl and learning curve) and <out>/ablation.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Variant:
    """One change against the defaults: settings overrides and/or candidates per ranking."""

    overrides: list[str] = field(default_factory=list)
    k: int = 4
    pool: int = 1  # candidate sets drawn per set ranked (alignloop experiment --pool)


VARIANTS = {
    "defaults": Variant(),
    "PPO 12 iterations": Variant(["train.ppo.iterations=12"]),
    "PPO 20 iterations": Variant(["train.ppo.iterations=20"]),
    "PPO 40 iterations": Variant(["train.ppo.iterations=40"]),
    "KL coefficient 0.1 (from 0.02)": Variant(["train.ppo.kl_coef=0.1"]),
    "adaptive KL, target 5 nats": Variant(["train.ppo.target_kl=5"]),
    "K = 9 candidates per ranking": Variant(k=9),
    "RM: full epochs each round": Variant(["train.loop.rm_max_steps=null"]),
    "PPO learning rate 1e-4 (from 2e-4)": Variant(["train.ppo.learning_rate=0.0001"]),
    "PPO batch 24 prompts (from 12)": Variant(["train.ppo.rollout_batch=24", "train.ppo.minibatch=12"]),
    "LoRA, adapter continued across rounds": Variant(["train.lora.enabled=true"]),
    "LoRA, PPO learning rate 1e-3": Variant(["train.lora.enabled=true", "train.ppo.learning_rate=0.001"]),
    "rank the RM's least certain half of twice the sets": Variant(pool=2),
    "RM calibrated (temperature on the judge set)": Variant(["train.rm.calibrate=true"]),
    "RM on the newest 42 rankings only (one round's)": Variant(["train.loop.rm_window=42"]),
}


def _row(name: str, rows: list[dict], rounds: int, seconds: float) -> str:
    final = [r for r in rows if r["round"] == rounds]
    wins = [r["serving_win"] for r in final]
    return (
        f"| {name} | {statistics.median(wins):.0%} | {', '.join(f'{w:.0%}' for w in wins)} "
        f"| {min(r['serving_interval_95'][0] for r in final):.0%} "
        f"| {sum(r['promoted'] for r in rows)} of {len(rows)} "
        f"| {statistics.median(r['kl_from_sft'] for r in final):.1f} "
        f"| {statistics.median(r['rm_calibration_error'] for r in final):.2f} "
        f"| {statistics.median(r['serving_answer_chars'] for r in final):.0f} "
        f"| {statistics.median(r['best_of_k_win'] for r in final):.0%} | {seconds:.0f} |"
    )


def main() -> None:
    """Run the variants and write the ablation table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--state-dir", type=Path, default=Path(".alignloop-bench/learning"))
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    args = parser.parse_args()
    out = args.state_dir / "ablation"
    lines = [
        f"Final serving version's win rate vs SFT by the hidden rule after {args.rounds} rounds, "
        f"seeds {' '.join(map(str, args.seeds))}; each variant changes one thing against the defaults.\n",
        "| variant | median | per seed | lowest 95% bound | rounds promoted | KL (median) "
        "| RM calibration error (median) | answer chars | best-of-K SFT by the RM | seconds |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in args.only or VARIANTS:
        variant = VARIANTS[name]
        slug = "".join(c if c.isalnum() else "-" for c in name.lower())
        command = [sys.executable, "-m", "alignloop", "experiment", "--state-dir", str(args.state_dir)]
        command += ["--seeds", *map(str, args.seeds), "--rounds", str(args.rounds), "--k", str(variant.k)]
        command += ["--pool", str(variant.pool)]
        command += ["--out", str(out / slug), *[a for o in variant.overrides for a in ("--set", o)]]
        print(f"[learning] {name}: {' '.join(command[1:])}", flush=True)
        started = time.time()
        subprocess.run(command, check=True)  # its progress goes to this console
        rows = [json.loads(line) for line in (out / slug / "rounds.jsonl").read_text().splitlines()]
        lines.append(_row(name, rows, args.rounds, time.time() - started))
        (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print((out / "ablation.md").read_text())


if __name__ == "__main__":
    main()
