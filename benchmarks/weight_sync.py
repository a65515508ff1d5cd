"""Whole weights into a running vLLM rollout engine: in memory (`ppo.weight_sync = "memory"`: one
shared-memory block, loaded in place) against a checkpoint written and reloaded (`"checkpoint"`,
the old way), on one engine, in rounds that alternate which goes first, each way through the
trainer's own functions (trainer/ppo_training.py's sync). PPO pays one of these per iteration.

    .venv/bin/python -m benchmarks.weight_sync                  # the 310M Llama, this machine
    .venv/bin/python -m benchmarks.weight_sync --model tiny --rounds 10
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from benchmarks.processes import rotated
from benchmarks.training import MODELS, build_models, machine
from core.config import TrainConfig
from trainer.models import load_causal_lm, published_weights, save_policy
from trainer.rollout import VLLMSampler
from trainer.runtime import Runtime

log = logging.getLogger("bench")
WAYS = ["memory", "checkpoint"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["tiny", *MODELS], default="310m")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = Runtime.resolve(TrainConfig())
    with tempfile.TemporaryDirectory(prefix="alignloop-sync-bench-") as tmp:
        work = Path(tmp)
        model_dir, _ = build_models(args.model, work)
        tok = AutoTokenizer.from_pretrained(model_dir)
        policy = load_causal_lm(model_dir, runtime)  # the trainable float32 copy PPO holds
        sampler = VLLMSampler(model_dir)
        prompt = [tok("Describe a fox.")["input_ids"]]
        seconds: dict[str, list[float]] = {way: [] for way in WAYS}
        greedy: dict[str, list] = {}
        try:
            for i in range(args.rounds):
                for way in rotated(WAYS, i):
                    with torch.no_grad():  # new values each time, as after an update
                        next(policy.parameters()).add_(1e-3)
                    started = time.perf_counter()
                    if way == "memory":
                        sampler.update_weights(published_weights(policy, runtime, model_dir, every_rank=True))
                    else:
                        save_policy(policy, tok, work / "checkpoint", runtime, model_dir)
                        sampler.update(work / "checkpoint")
                    seconds[way].append(time.perf_counter() - started)
                    log.info("round %d, %s: %.3f s", i + 1, way, seconds[way][-1])
            # The same weights both ways give the same greedy text.
            save_policy(policy, tok, work / "checkpoint", runtime, model_dir)
            sampler.update(work / "checkpoint")
            greedy["checkpoint"] = sampler.generate(prompt, 8, 0.0, 0)
            sampler.update_weights(published_weights(policy, runtime, model_dir, every_rank=True))
            greedy["memory"] = sampler.generate(prompt, 8, 0.0, 0)
        finally:
            sampler.close()
        size = sum(p.numel() for p in policy.parameters()) * 4 / 2**30
    print(
        f"\nMachine: {machine()}\nModel: {args.model}, {size:.2f} GiB of float32 weights; {args.rounds} rounds\n"
    )
    print("| weights into the running engine | median s | min s | max s |\n|---|---|---|---|")
    for way, name in zip(
        WAYS, ["in memory (shared-memory block)", "through a checkpoint (old way)"], strict=True
    ):
        s = seconds[way]
        print(f"| {name} | {statistics.median(s):.3f} | {min(s):.3f} | {max(s):.3f} |")
    ratio = statistics.median(seconds["memory"]) / statistics.median(seconds["checkpoint"])
    print(f"| in memory / checkpoint | {ratio:.2f}x | | |")
    print(
        f"\nThe same weights give the same greedy text both ways: {greedy['memory'] == greedy['checkpoint']}"
    )


if __name__ == "__main__":
    main()
