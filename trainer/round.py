"""One training round's work, apart from where its data comes from: RM -> PPO-ptx -> gate.

The trainer service feeds it what people sent through Kafka; the experiment runner
(`alignloop experiment`) feeds it simulated raters' rankings, so both measure the same code.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from core.config import LoopConfig, Settings
from trainer.calibration import calibrate
from trainer.data import Ranking, held_out, read_texts, stable_subset
from trainer.dataset_store import RankedBy
from trainer.gate import GateResult, evaluate
from trainer.memory_plan import check_round
from trainer.ppo_training import train_ppo
from trainer.reward_training import train_rm
from trainer.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class RoundInputs:
    """What a round trains and judges on, and where it starts from."""

    rankings: list[Ranking]  # the reward model trains on these (oldest first)
    judge_set: list[Ranking]  # held out: they judge the reward model before its scores judge a candidate
    prompts: list[str]  # every prompt collected; split here into PPO's and the gate's
    sft: Path  # the KL anchor and PPO reference
    serving: Path  # what the candidate must beat
    rm_init: Path  # the last round's reward model (or SFT): learning accumulates across rounds
    policy_init: Path | None = None  # PPO starts here (None: SFT) ...
    policy_adapter: Path | None = None  # ... or, with LoRA, from this adapter on SFT


@dataclass
class RoundOutputs:
    """A round's reward model and policy (under its directory) and how they measured."""

    rm: dict[str, float]
    ppo: dict[str, float]
    gate: GateResult


_GATE_PTX_TEXTS = 64  # held-out pretraining texts the gate measures the alignment tax on


def load_pretraining(settings: Settings) -> tuple[list[str], list[str]]:
    """(texts to train on, held-out texts for the gate) from train.loop.pretraining_data."""
    path = settings.train.loop.pretraining_data or settings.paths.pretraining_data
    if not path.exists():
        if settings.train.ppo.ptx_coef:
            raise RuntimeError(
                f"PPO-ptx needs pretraining text and there is none at {path}: write JSON lines of "
                '{"text": ...} there, point train.loop.pretraining_data at such a file or at a folder '
                "of .jsonl/.txt files, or set train.ppo.ptx_coef=0 for plain PPO"
            )
        return [], []
    texts = list(dict.fromkeys(read_texts(path, settings.train.loop.pretraining_max_texts)))  # distinct
    train = [t for t in texts if not held_out(t, 0.05)]
    return train, [t for t in texts if held_out(t, 0.05)][:_GATE_PTX_TEXTS]


def split_for_judging(ranked: list[RankedBy], cfg: LoopConfig) -> tuple[list[Ranking], list[Ranking]]:
    """(rankings to train the RM on, rankings that judge it): the held-out prompts' and, once
    there are enough raters, the held-out raters' rankings judge; the RM never trains on them."""
    by_user = len({r.rater for r in ranked}) >= cfg.min_raters_to_hold_out
    judge = [
        held_out(r.ranking.prompt, cfg.eval_fraction)
        or (by_user and held_out("rater:" + r.rater, cfg.eval_user_fraction))
        for r in ranked
    ]
    return [r.ranking for r, j in zip(ranked, judge) if not j], [
        r.ranking for r, j in zip(ranked, judge) if j
    ]


def split_prompts(prompts: list[str], settings: Settings) -> tuple[list[str], list[str]]:
    """(PPO's prompts, the gate's held-out prompts), the latter bounded so that the gate's time does
    not grow with all the traffic ever collected."""
    cfg = settings.train.loop
    train = [p for p in prompts if not held_out(p, cfg.eval_fraction)] or prompts
    held = [p for p in prompts if held_out(p, cfg.eval_fraction)] or prompts
    return train, stable_subset(held, cfg.gate_max_prompts)


def train_candidate(
    inputs: RoundInputs,
    round_dir: Path,
    settings: Settings,
    runtime: Runtime,
    pretraining: list[str],
    gate_pretraining: list[str],
) -> RoundOutputs:
    """Train the reward model into round_dir/rm and the policy into round_dir/policy, then gate it."""
    cfg = settings.train.loop
    plan = check_round(inputs.sft, inputs.rm_init, settings, runtime)  # refuses before loading anything
    if runtime.world.main:
        log.info("%s", plan.table())
    train_prompts, eval_prompts = split_prompts(inputs.prompts, settings)
    rm = train_rm(
        inputs.rm_init,
        inputs.rankings[-cfg.rm_window :] if cfg.rm_window else inputs.rankings,
        round_dir / "rm",
        settings.train.rm,
        runtime,
        max_steps=cfg.rm_max_steps,
    )
    if settings.train.rm.calibrate and inputs.judge_set:
        rm |= calibrate(round_dir / "rm", inputs.judge_set, runtime, settings.train.rm.max_len)
    runtime.release_memory()  # the RM stage's models are gone: PPO (and its engine) gets their memory
    ppo = train_ppo(
        inputs.sft,
        round_dir / "rm",
        train_prompts,
        pretraining,
        round_dir / "policy",
        settings.train.ppo,
        runtime,
        engine=settings.engine,
        init=inputs.policy_init,
        init_adapter=inputs.policy_adapter,
    )
    runtime.release_memory()
    if runtime.world.main:
        log.info(
            "round: peak memory per stage: rm %.2f GiB, ppo %.2f GiB (planned %s)",
            rm["peak_memory_gib"],
            ppo.get("peak_memory_gib", float("nan")),  # nan: PPO had finished before a restart
            plan.summary(),
        )
    gate = evaluate(
        round_dir / "policy",
        inputs.serving,
        inputs.sft,
        round_dir / "rm",
        eval_prompts,
        gate_pretraining,
        margin=cfg.gate_margin,
        kl_budget=cfg.kl_budget,
        ptx_regression=cfg.ptx_regression,
        max_new_tokens=settings.train.ppo.max_new_tokens,
        runtime=runtime,
        batch=cfg.eval_batch,
        judge_set=inputs.judge_set,
        samples_per_prompt=max(
            cfg.gate_samples_per_prompt, math.ceil(cfg.gate_min_answers / max(1, len(eval_prompts)))
        ),
        confidence_z=cfg.gate_confidence_z,
        min_judge_accuracy=cfg.min_judge_accuracy,
    )
    return RoundOutputs(rm, ppo, gate)
