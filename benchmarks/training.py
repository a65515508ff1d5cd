"""Training benchmark, one run, one machine, the same data:

1. Reward model on K = 9 rankings: this trainer (one ranking = one element, K forwards) vs TRL's
   RewardTrainer on the same comparisons as pairs (2 forwards per pair). Both see the same number
   of sequences per optimiser step, the same learning rate and one epoch. Reported: comparisons/s
   and held-out pairwise accuracy on the same held-out rankings.
2. PPO samples/s with vLLM rollouts vs transformers rollouts, same settings.

    make bench-training      (installs the `bench` extra: trl)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from core.config import PPOConfig, RMConfig, SFTConfig, TinyModelConfig
from benchmarks.processes import machine
from synthetic import task
from trainer.data import Ranking, pad_batch, prompt_ids, response_ids
from trainer.reward_model import ranking_pairs

log = logging.getLogger("bench")


def accuracy(score_fn, tok, rankings: list[Ranking]) -> float:
    """Held-out pairwise accuracy of any scorer (ids, attention) -> rewards."""
    right = total = 0
    with torch.no_grad():
        for r in rankings:
            seqs = [prompt_ids(tok, r.prompt) + response_ids(tok, y) for y in r.responses]
            ids, attn, _ = pad_batch(seqs, tok.pad_token_id)
            rewards = score_fn(ids, attn)
            for w, l in ranking_pairs(r.ranking):
                right += int(rewards[w] > rewards[l])
                total += 1
    return right / total


def ours(sft: Path, train: list[Ranking], held: list[Ranking], work: Path, lr: float, rankings_per_step: int) -> dict:
    from trainer.reward_model import RewardModel
    from trainer.reward_training import train_rm

    t = time.perf_counter()
    train_rm(sft, train, work / "ours", RMConfig(batch_size=rankings_per_step, learning_rate=lr, eval_fraction=0.0,
                                                   save_every=0))
    seconds = time.perf_counter() - t
    model = RewardModel.from_pretrained(work / "ours").eval()
    comparisons = sum(len(ranking_pairs(r.ranking)) for r in train)
    return {"seconds": seconds, "comparisons_per_s": comparisons / seconds,
            "accuracy": accuracy(model, AutoTokenizer.from_pretrained(sft), held)}


def trl(sft: Path, train: list[Ranking], held: list[Ranking], work: Path, lr: float, pairs_per_step: int) -> dict:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    rows = [{"prompt": [{"role": "user", "content": r.prompt}],
             "chosen": [{"role": "assistant", "content": r.responses[w]}],
             "rejected": [{"role": "assistant", "content": r.responses[l]}]}
            for r in train for w, l in ranking_pairs(r.ranking)]
    tok = AutoTokenizer.from_pretrained(sft)
    args = RewardConfig(output_dir=str(work / "trl"), per_device_train_batch_size=pairs_per_step, learning_rate=lr,
                        num_train_epochs=1, max_length=256, report_to="none", save_strategy="no", logging_steps=50,
                        use_cpu=not torch.cuda.is_available(), bf16=False, lr_scheduler_type="constant",
                        warmup_steps=0, dataloader_drop_last=True)
    trainer = RewardTrainer(model=str(sft), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    model = trainer.model.eval()

    def score(ids, attn):
        return model(input_ids=ids, attention_mask=attn).logits[:, 0]

    return {"seconds": seconds, "comparisons_per_s": len(rows) / seconds, "accuracy": accuracy(score, tok, held)}


def ppo_rates(sft: Path, rm: Path, work: Path, iterations: int) -> dict:
    from synthetic.corpus import pretraining_texts
    from trainer.ppo_training import train_ppo

    out = {}
    prompts = task.prompts(64, seed=31)
    for engine in ("transformers", "vllm"):
        cfg = PPOConfig(iterations=iterations, rollout_batch=32, minibatch=8, max_new_tokens=32, ptx_coef=1.0,
                        rollout_engine=engine, save_every=0)
        metrics = train_ppo(sft, rm, prompts, pretraining_texts(256, seed=3), work / f"ppo-{engine}", cfg)
        out[engine] = metrics["samples_per_s"]
        log.info("ppo with %s rollouts: %.1f samples/s", engine, out[engine])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rankings", type=int, default=200, help="training rankings (K = 9 each)")
    parser.add_argument("--heldout", type=int, default=60)
    parser.add_argument("--rankings-per-step", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ppo-iterations", type=int, default=6)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from synthetic.tiny_model import build_tiny_model
    from trainer.sft import train_sft

    with tempfile.TemporaryDirectory(prefix="alignloop-tbench-") as tmp:
        work = Path(tmp)
        base = build_tiny_model(work / "base", TinyModelConfig())
        sft = train_sft(base, task.demonstrations(480, seed=1), work / "sft", SFTConfig(learning_rate=1e-3))
        train = task.rankings(args.rankings, k=9, seed=21)
        held = task.rankings(args.heldout, k=9, seed=22)
        k = 9
        ours_r = ours(sft, train, held, work, args.lr, args.rankings_per_step)
        log.info("ours: %s", ours_r)
        # The same sequences per optimiser step: rankings_per_step * K sequences = that many / 2 pairs.
        trl_r = trl(sft, train, held, work, args.lr, args.rankings_per_step * k // 2)
        log.info("trl: %s", trl_r)
        ppo = ppo_rates(sft, work / "ours", work, args.ppo_iterations)
    comparisons = sum(len(ranking_pairs(r.ranking)) for r in train)
    print(f"\nMachine: {machine()}")
    print(f"Data: {args.rankings} training rankings of K = 9 ({comparisons} comparisons), {args.heldout} held-out "
          f"rankings; 1 epoch; lr {args.lr}; {args.rankings_per_step * k} sequences per optimiser step for both.\n")
    print("| reward model trainer | seconds | comparisons/s | held-out pairwise accuracy |\n|---|---|---|---|")
    print(f"| alignloop (K-wise, one ranking = one element) | {ours_r['seconds']:.1f} | {ours_r['comparisons_per_s']:.0f} | {ours_r['accuracy']:.3f} |")
    print(f"| TRL RewardTrainer (pairs) | {trl_r['seconds']:.1f} | {trl_r['comparisons_per_s']:.0f} | {trl_r['accuracy']:.3f} |")
    print(f"| alignloop / TRL | | {ours_r['comparisons_per_s'] / trl_r['comparisons_per_s']:.2f}x | |")
    print(f"\n| PPO rollouts ({args.ppo_iterations} iterations x 32 prompts, 32 new tokens) | samples/s |\n|---|---|")
    print(f"| transformers generate | {ppo['transformers']:.1f} |\n| vLLM (in-place weight reload each iteration) | {ppo['vllm']:.1f} |")
    print(f"| vLLM / transformers | {ppo['vllm'] / ppo['transformers']:.2f}x |")


if __name__ == "__main__":
    main()
