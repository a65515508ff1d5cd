"""Training benchmark: this trainer against plain PyTorch (and TRL) in one run, one machine, the same data.

1. Reward model on K = 9 rankings: `train_rm` vs a plain-PyTorch loop of the same K-wise loss on
   the same model, batches (same order, same max_len), device and precision (bf16 autocast and
   fused AdamW on a GPU), both in this process, over rounds that alternate which goes first, each
   with warm-up steps left out of its timing. Reported: pairs trained per second (ties form none)
   of each (median over rounds), their ratio, peak memory. Optionally TRL's
   RewardTrainer on the same comparisons as pairs (--trl; needs the `bench` extra).
2. PPO-ptx: samples/s and peak memory of an iteration, transformers rollouts (and vLLM rollouts
   where vLLM is installed), full weights and LoRA.

    make bench-training                                   # tiny model, this machine's device
    .venv/bin/python -m benchmarks.training --model 310m  # the 310M Llama of docs/benchmarks.md
    PYTHONPATH=. python benchmarks/training.py --model 310m --no-ppo-vllm    # a GPU box without vLLM
    PYTHONPATH=. python benchmarks/training.py --model 7b --only ppo --lora-only --gradient-checkpointing \
        --ppo-shape 16,8,64,8 --ppo-iterations 2 --no-ppo-vllm           # one 7B PPO-ptx iteration's memory

Peak memory is the GPU's (reset per stage) on a GPU; on a CPU it is the process's peak RSS so far,
which only grows: read it per stage as "at most".
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaForCausalLM

if __package__ in (None, ""):  # run as a file on a machine without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import LoRAConfig, PPOConfig, RMConfig, SFTConfig, TinyModelConfig, TrainConfig
from feedback.events import ranking_pairs
from synthetic import task
from synthetic.corpus import pretraining_texts
from trainer.data import Ranking, encode_responses
from trainer.runtime import Runtime
from trainer.supervised_loop import epoch_order

log = logging.getLogger("bench")
MODELS = {  # name -> LlamaConfig fields (random weights, the tiny model's tokenizer)
    "310m": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "intermediate_size": 2816,
    },
    "7b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 512,
    },  # to try the other presets' code paths on a CPU in seconds
}


def machine() -> str:
    """The machine and software versions (vLLM only if installed)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    import os

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        import vllm

        engine = f", vllm {vllm.__version__}"
    except ImportError:
        engine = ", no vLLM"
    import transformers

    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}{engine}"
    )


def build_models(kind: str, work: Path) -> tuple[Path, Path]:
    """(policy to train from, its tokenizer's dir): the tiny model after SFT, or a random model of a named size."""
    from synthetic.tiny_model import build_tiny_model
    from trainer.sft import train_sft

    if kind == "tiny":
        base = build_tiny_model(work / "base", TinyModelConfig())
        sft = train_sft(
            base,
            task.demonstrations(480, seed=1),
            work / "sft",
            SFTConfig(learning_rate=1e-3),
            Runtime(device=torch.device("cpu")),
        )
        return sft, sft
    tok_dir = build_tiny_model(work / "tok", TinyModelConfig(pretrain_steps=1, corpus_examples=600))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **MODELS[kind],
    )
    # Big models are initialised where they will run, in bf16 on a GPU (a 7B in fp32 on the CPU
    # takes minutes to build and 27 GB to save).
    on_gpu = torch.cuda.is_available() and kind != "small"
    with torch.device("cuda" if on_gpu else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if on_gpu else torch.float32)
    log.info("built a random %s model: %.0fM parameters", kind, model.num_parameters() / 1e6)
    model.save_pretrained(work / kind, safe_serialization=True)
    tok.save_pretrained(work / kind)
    return work / kind, work / kind


def plain_pytorch_rm(
    model_dir: Path,
    train: list[Ranking],
    runtime: Runtime,
    per_step: int,
    lr: float,
    max_len: int,
    steps: int,
    warmup: int,
) -> dict:
    """The reference: the same K-wise loss, batches and device, written directly in PyTorch; its
    first `warmup` steps are not timed."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    device = runtime.device
    backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32).to(device).train()
    head = torch.nn.Linear(backbone.config.hidden_size, 1).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, fused=device.type == "cuda")
    order = _order(train, per_step)
    runtime.reset_peak_memory()
    started = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        batch = [train[i] for i in order[step * per_step : (step + 1) * per_step]]
        ids, attn = encode_responses(
            tok,
            [r.prompt for r in batch for _ in r.responses],
            [y for r in batch for y in r.responses],
            max_len,
        )
        ids, attn = ids.to(device), attn.to(device)
        with runtime.autocast():
            hidden = backbone(input_ids=ids, attention_mask=attn).last_hidden_state
            values = head(hidden).squeeze(-1).float()
        rewards = values[torch.arange(len(ids), device=device), attn.sum(1) - 1]
        losses, start = [], 0
        for r in batch:
            pairs = ranking_pairs(r.ranking)
            w = torch.tensor([p[0] for p in pairs], device=device) + start
            lo = torch.tensor([p[1] for p in pairs], device=device) + start
            losses.append(-F.logsigmoid(rewards[w] - rewards[lo]).mean())
            start += len(r.responses)
        loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    comparisons = timed_pairs(train, per_step, warmup, steps)
    return {
        "seconds": seconds,
        "comparisons_per_s": comparisons / seconds,
        "peak_gib": runtime.peak_memory_gib(),
    }


def _order(train: list[Ranking], per_step: int) -> list[int]:
    return epoch_order(
        len(train), 0, 0, [len(r.prompt) + max(map(len, r.responses)) for r in train], per_step
    )


def timed_pairs(train: list[Ranking], per_step: int, first: int, steps: int) -> int:
    """The pairs trained in steps first .. first + steps (tied candidates form none)."""
    order = _order(train, per_step)[first * per_step : (first + steps) * per_step]
    return sum(len(ranking_pairs(train[i].ranking)) for i in order)


def ours_rm(
    model_dir: Path,
    train: list[Ranking],
    work: Path,
    runtime: Runtime,
    per_step: int,
    lr: float,
    max_len: int,
    steps: int,
    warmup: int,
    micro_batch: int | None = None,
) -> dict:
    """This trainer's train_rm on the same data: `warmup` steps, then (resumed in this process) the
    timed steps, its training loop timed as the reference's is."""
    from trainer.reward_training import train_rm

    cfg = RMConfig(batch_size=per_step, learning_rate=lr, max_len=max_len, eval_fraction=0.0, save_every=0)
    if micro_batch:
        cfg = cfg.model_copy(update={"micro_batch_sequences": micro_batch})
    runtime.reset_peak_memory()
    if warmup:
        train_rm(model_dir, train, work, cfg, runtime, max_steps=warmup)
    metrics = train_rm(model_dir, train, work, cfg, runtime, max_steps=warmup + steps)
    seconds = metrics["train_seconds"]
    comparisons = timed_pairs(train, per_step, warmup, steps)
    return {
        "seconds": seconds,
        "comparisons_per_s": comparisons / seconds,
        "peak_gib": runtime.peak_memory_gib(),
    }


def trl_rm(model_dir: Path, train: list[Ranking], work: Path, lr: float, pairs_per_step: int) -> dict:
    """TRL's RewardTrainer on the same comparisons as (chosen, rejected) pairs."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    rows = [
        {
            "prompt": [{"role": "user", "content": r.prompt}],
            "chosen": [{"role": "assistant", "content": r.responses[w]}],
            "rejected": [{"role": "assistant", "content": r.responses[lo]}],
        }
        for r in train
        for w, lo in ranking_pairs(r.ranking)
    ]
    args = RewardConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=pairs_per_step,
        learning_rate=lr,
        num_train_epochs=1,
        max_length=256,
        report_to="none",
        save_strategy="no",
        logging_steps=50,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        lr_scheduler_type="constant",
        warmup_steps=0,
        dataloader_drop_last=True,
    )
    trainer = RewardTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "comparisons_per_s": len(rows) / seconds}


def ppo_rates(
    model_dir: Path,
    rm_dir: Path,
    work: Path,
    runtime: Runtime,
    iterations: int,
    engines: list[str],
    variants: tuple[bool, ...] = (False, True),
    shape: dict | None = None,
) -> dict:
    """samples/s, peak memory and the time to sync the trained weights into the rollout engine
    (last iteration) of PPO-ptx, per rollout engine, full weights and/or LoRA; on vLLM, each way of
    syncing: whole weights in memory and through a checkpoint reloaded (the old way), and with LoRA
    the adapter alone too."""
    from trainer.ppo_training import train_ppo

    out = {}
    shape = shape or {"rollout_batch": 32, "minibatch": 8, "max_new_tokens": 32, "ptx_batch": 16}
    prompts = task.prompts(64, seed=31)
    vllm_ways = [("merged", "memory"), ("merged", "checkpoint")]
    runs = [
        (engine, lora, weights, sync)
        for engine in engines
        for lora in variants
        for weights, sync in (
            ([("adapter", "memory")] if lora else []) + vllm_ways
            if engine == "vllm"
            else [("merged", "memory")]
        )
    ]
    for engine, lora, weights, sync in runs:
        rt = Runtime(
            runtime.device,
            runtime.precision,
            lora=LoRAConfig(enabled=lora),
            gradient_checkpointing=runtime.gradient_checkpointing,
        )
        cfg = PPOConfig(
            iterations=iterations,
            ptx_coef=1.0,
            rollout_engine=engine,
            rollout_weights=weights,
            weight_sync=sync,
            save_every=0,
            **shape,
        )
        rt.reset_peak_memory()
        name = f"{engine}, {'LoRA' if lora else 'full weights'}"
        if engine == "vllm":
            name += ", adapter into the engine" if weights == "adapter" else ", merged" if lora else ""
            name += (
                "" if weights == "adapter" else f", {'in memory' if sync == 'memory' else 'via a checkpoint'}"
            )
        metrics = train_ppo(
            model_dir,
            rm_dir,
            prompts,
            pretraining_texts(256, seed=3),
            work / f"ppo-{engine}-{lora}-{weights}-{sync}",
            cfg,
            rt,
        )
        out[name] = {
            "samples_per_s": metrics["samples_per_s"],
            "peak_gib": metrics["peak_memory_gib"],
            "sync_s": metrics["sync_s"] if engine == "vllm" else None,
            "iteration_s": metrics["rollout_s"] + metrics["update_s"] + metrics["sync_s"],
        }
        log.info("ppo (%s): %s", name, out[name])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["tiny", *MODELS], default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--rankings", type=int, default=200, help="training rankings (K = 9 each)")
    parser.add_argument("--rankings-per-step", type=int, default=8)
    parser.add_argument("--steps", type=int, default=0, help="RM steps to time (0: one epoch)")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ppo-iterations", type=int, default=4)
    parser.add_argument("--no-ppo-vllm", action="store_true", help="transformers rollouts only")
    parser.add_argument(
        "--trl", action="store_true", help="also time TRL's RewardTrainer (the `bench` extra)"
    )
    parser.add_argument("--only", choices=["all", "rm", "ppo"], default="all")
    parser.add_argument(
        "--lora-only", action="store_true", help="PPO with LoRA only (a 7B needs it on one GPU)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--ppo-shape",
        default="32,8,32,16",
        help="rollout prompts, minibatch, new tokens, pretraining batch (7B reference: 16,8,64,8)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="RM rounds, alternating who goes first")
    parser.add_argument("--warmup-steps", type=int, default=3, help="RM steps not timed, on both sides")
    parser.add_argument(
        "--rm-micro-batch", type=int, help="rm.micro_batch_sequences for train_rm (default: the setting's)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = Runtime.resolve(
        TrainConfig(
            device=args.device, precision=args.precision, gradient_checkpointing=args.gradient_checkpointing
        )
    )
    train = task.rankings(args.rankings, k=9, seed=21)
    per_step = args.rankings_per_step
    steps = args.steps or len(train) // per_step - args.warmup_steps
    results: dict = {"machine": machine(), "runtime": runtime.describe(), "model": args.model, "steps": steps}
    with tempfile.TemporaryDirectory(prefix="alignloop-tbench-") as tmp:
        work = Path(tmp)
        model_dir, _ = build_models(args.model, work)
        if args.only in ("all", "rm"):
            # Both in this process, in alternating order over rounds, warm-up steps untimed on both
            # sides: neither profits from going second (a warm allocator, loaded kernels).
            runs: dict[str, list[dict]] = {"plain_pytorch": [], "ours": []}
            for i in range(args.rounds):
                for who in ("plain_pytorch", "ours") if i % 2 == 0 else ("ours", "plain_pytorch"):
                    shape = (per_step, args.lr, args.max_len, steps, args.warmup_steps)
                    runs[who].append(
                        plain_pytorch_rm(model_dir, train, runtime, *shape)
                        if who == "plain_pytorch"
                        else ours_rm(
                            model_dir, train, work / f"ours-{i}", runtime, *shape, args.rm_micro_batch
                        )
                    )
                    log.info("rm round %d, %s: %s", i + 1, who, runs[who][-1])
            for who, rs in runs.items():
                results[who] = {k: statistics.median(r[k] for r in rs) for k in rs[0]} | {"rounds": rs}
            shutil.copytree(work / "ours-0", work / "ours")  # PPO below scores with it
        if args.trl:
            results["trl"] = trl_rm(model_dir, train, work, args.lr, per_step * 9 // 2)
        if args.only in ("all", "ppo"):
            # PPO alone scores with a fresh head on the policy's own backbone: a checkpoint without a
            # head file loads as one (no second copy of a 7B model written and read).
            rm_dir = work / "ours" if (work / "ours").exists() else model_dir
            try:
                import vllm  # noqa: F401

                engines = ["transformers"] if args.no_ppo_vllm else ["transformers", "vllm"]
            except ImportError:
                engines = ["transformers"]
            rb, mb, nt, pb = (int(x) for x in args.ppo_shape.split(","))
            results["ppo"] = ppo_rates(
                model_dir,
                rm_dir,
                work,
                runtime,
                args.ppo_iterations,
                engines,
                (True,) if args.lora_only else (False, True),
                {"rollout_batch": rb, "minibatch": mb, "max_new_tokens": nt, "ptx_batch": pb},
            )
    report(results, args, per_step)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(r: dict, args, per_step: int) -> None:
    """The figures as Markdown tables."""
    print(f"\nMachine: {r['machine']}\nRuntime: {r['runtime']}")
    if "ours" in r:
        report_rm(r, args, per_step)
    if "ppo" in r:
        print(
            f"\n| PPO-ptx ({args.ppo_iterations} iterations; rollout, minibatch, new tokens, ptx batch = "
            f"{args.ppo_shape}) | samples/s | peak memory GiB | weights into the rollout engine, s/iteration |"
            "\n|---|---|---|---|"
        )
        for name, x in r["ppo"].items():
            sync = f"{x['sync_s']:.3f}" if x["sync_s"] is not None else "(same model)"
            print(f"| {name} | {x['samples_per_s']:.1f} | {x['peak_gib']:.2f} | {sync} |")


def report_rm(r: dict, args, per_step: int) -> None:
    """The reward-model table."""
    comparisons = timed_pairs(
        task.rankings(args.rankings, k=9, seed=21), per_step, args.warmup_steps, r["steps"]
    )
    print(
        f"Model: {args.model}; {r['steps']} timed steps of {per_step} rankings x K = 9 ({comparisons} pairs "
        f"trained, ties forming none) after {args.warmup_steps} untimed, max_len {args.max_len}, lr {args.lr}; "
        f"median of {args.rounds} rounds, alternating which goes first\n"
    )
    print("| reward model step | seconds | comparisons/s | peak memory GiB |\n|---|---|---|---|")
    for name, key in (("plain PyTorch (reference)", "plain_pytorch"), ("alignloop train_rm", "ours")):
        x = r[key]
        print(f"| {name} | {x['seconds']:.2f} | {x['comparisons_per_s']:.0f} | {x['peak_gib']:.2f} |")
    if "trl" in r:
        print(
            f"| TRL RewardTrainer (pairs) | {r['trl']['seconds']:.2f} | {r['trl']['comparisons_per_s']:.0f} | |"
        )
    print(
        f"| alignloop / plain PyTorch | | {r['ours']['comparisons_per_s'] / r['plain_pytorch']['comparisons_per_s']:.2f}x | |"
    )


if __name__ == "__main__":
    main()
