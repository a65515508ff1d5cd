"""`alignloop train sft|rm|ppo`: the training stages from datasets on disk (see trainer/data.py)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from core.config import Settings
from trainer import distributed
from trainer.data import load_rankings, read_jsonl, record_prompt
from trainer.runtime import Runtime

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `train` subcommand's arguments."""
    parser.add_argument("stage", choices=["sft", "rm", "ppo"])
    parser.add_argument(
        "--init",
        type=Path,
        required=True,
        help="sft: base policy; rm: SFT policy (or an earlier RM); ppo: SFT policy",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help='sft: demonstrations.jsonl; rm: rankings.jsonl; ppo: prompts.jsonl ({"prompt": ...} or, multi-turn, {"messages": [...]})',
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output checkpoint dir (resumes if it holds a state)"
    )
    parser.add_argument("--rm", type=Path, help="ppo: the reward model dir")
    parser.add_argument("--pretraining", type=Path, help="ppo: pretraining.jsonl for the ptx term")
    parser.add_argument(
        "--reference", type=Path, help="rm: demonstrations.jsonl whose mean reward is set to 0"
    )
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (sft, rm)")


def run(settings: Settings, args: argparse.Namespace) -> None:
    """Run one stage; works the same under torchrun (DDP)."""
    world = distributed.init()
    if not world.main:
        logging.getLogger().setLevel(logging.WARNING)
    cfg = settings.train
    runtime = Runtime.resolve(cfg, world)
    if args.stage == "sft":
        from trainer.sft import train_sft

        demos = [(record_prompt(r), r["response"]) for r in read_jsonl(args.data)]
        train_sft(args.init, demos, args.out, cfg.sft, runtime, max_steps=args.max_steps)
        result = {"out": str(args.out)}
    elif args.stage == "rm":
        from trainer.reward_training import train_rm

        reference = (
            [(record_prompt(r), r["response"]) for r in read_jsonl(args.reference)]
            if args.reference
            else None
        )
        result = train_rm(
            args.init,
            load_rankings(args.data),
            args.out,
            cfg.rm,
            runtime,
            reference,
            max_steps=args.max_steps,
        )
    else:
        from trainer.ppo_training import train_ppo

        if args.rm is None:
            raise SystemExit("ppo needs --rm")
        prompts = [record_prompt(r) for r in read_jsonl(args.data)]
        texts = [r["text"] for r in read_jsonl(args.pretraining)] if args.pretraining else []
        if cfg.ppo.ptx_coef and not texts:
            raise SystemExit("PPO-ptx needs --pretraining (or --set train.ppo.ptx_coef=0 for plain PPO)")
        result = train_ppo(args.init, args.rm, prompts, texts, args.out, cfg.ppo, runtime, settings.engine)
    distributed.finish(world)
    if world.main:
        print(json.dumps(result))
