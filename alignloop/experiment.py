"""`alignloop experiment`: the trainer's rounds on simulated raters, with no HTTP and no broker.

For each seed, round after round:
  the serving policy answers each of the users' prompts K times per ranking (as the demo's users
  ask for K candidates) -> the hidden rule ranks each set -> one trainer round on all rankings so
  far (trainer.round: RM -> PPO-ptx -> gate, the service's own code) -> a simulated canary: a
  candidate that passed the gate is promoted if the hidden rule prefers its answers to the serving
  version's on the users' prompts (the gateway's canary asks people the same question).

Each round records the rankings used so far, the RM's held-out accuracy, KL from SFT, the
alignment tax, the gate's decision, and the serving version's win rate against SFT by the hidden
rule on prompts no user asks (with its 95% interval); the learning curve plots that win rate
against the rankings collected. The trainer never sees the rule, only rankings it produced.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import AutoTokenizer

from alignloop.bootstrap import ensure_base_policy
from core.config import Settings
from registry.store import PolicyRegistry
from synthetic.judge import TRAIN_PROMPTS, HiddenRuleJudge
from synthetic.task import rank
from trainer.acquisition import uncertainties
from trainer.data import Ranking
from trainer.dataset_store import RankedBy
from trainer.evaluate import sampled_responses, score
from trainer.lora import ADAPTER_DIR
from trainer.reward_model import RewardModel
from trainer.round import RoundInputs, load_pretraining, split_for_judging, train_candidate
from trainer.runtime import Runtime

log = logging.getLogger("alignloop.experiment")

_USERS = 4  # the demo's population: rankings are spread over this many raters
_CANARY_ANSWERS = 8  # per users' prompt, for the simulated canary (7 prompts: 56 pairs)


@dataclass
class Plan:
    """What one experiment runs."""

    seeds: list[int]
    rounds: int
    rankings_per_prompt: int  # per round, per users' prompt
    k: int  # candidates per ranking
    out: Path
    # Candidate sets drawn per set ranked. Above 1, the last round's reward model picks the sets it
    # is least sure of (gateway.labelling.random_share of them at random), as the labelling queue does.
    pool: int = 1


@dataclass
class RoundRow:
    """One round of one seed, as the table and the learning curve show it."""

    seed: int
    round: int
    rankings: int  # collected so far (they train or judge this round's RM)
    rm_trained_on: int  # of them, the rankings this round's RM trained on (train.loop.rm_window: the newest)
    rm_accuracy: float  # on rankings it never trained on (the gate's judge set, else the RM's own split)
    rm_calibration_error: float  # on the judge set: how far its confidence is from its accuracy
    kl_from_sft: float
    alignment_tax: float | None  # the candidate's pretraining loss / SFT's
    gate: str  # passed, or the gate's reasons
    promoted: bool
    candidate_win: float  # the candidate's win rate vs SFT by the hidden rule
    serving_win: float  # the serving version's after the round (what users now get)
    serving_interval_95: tuple[float, float]
    serving_answer_chars: float  # mean length of its answers (SFT's: see the page's head)
    best_of_k_win: float  # the baseline to beat: SFT's best of K answers by this round's RM, vs SFT
    seconds: float


def _collect(
    policy: Path, plan: Plan, seed: int, number: int, rm: Path | None, runtime: Runtime, random_share: float
) -> list[RankedBy]:
    """One round's rankings: K answers of the serving policy per ranking, ordered by the hidden rule;
    with a pool, of the candidate sets the reward model `rm` is least sure of."""
    draw_seed = 10_000 * seed + 100 * number
    sets_per_prompt = plan.rankings_per_prompt * (plan.pool if rm is not None else 1)
    per_prompt = sets_per_prompt * plan.k
    answers = sampled_responses(policy, TRAIN_PROMPTS, per_prompt=per_prompt, seed=draw_seed)
    sets = [
        (prompt, answers[start : start + plan.k])
        for i, prompt in enumerate(TRAIN_PROMPTS)
        for start in range(i * per_prompt, (i + 1) * per_prompt, plan.k)
    ]
    raters = random.Random(draw_seed)
    if rm is not None and plan.pool > 1:
        keep = plan.rankings_per_prompt * len(TRAIN_PROMPTS)
        sets = _least_certain(sets, keep, (rm, policy), runtime, round(keep * random_share), raters)
    out = []
    for prompt, candidates in sets:
        order = rank(candidates)
        if len(order) > 1:  # all equally good to the rater: nothing to say (as the demo's users)
            out.append(RankedBy(Ranking(prompt, candidates, order), f"user-{raters.randrange(_USERS)}"))
    return out


def _least_certain(
    sets: list[tuple[str, list[str]]],
    keep: int,
    model: tuple[Path, Path],
    runtime: Runtime,
    at_random: int,
    rng: random.Random,
) -> list[tuple[str, list[str]]]:
    """`keep` of the candidate sets: `at_random` of them drawn uniformly, the rest those the reward
    model (model: its folder, a tokenizer's) is least sure of (trainer/acquisition.py's measure)."""
    unsure = uncertainties(sets, *model, runtime)
    drawn = set(rng.sample(range(len(sets)), at_random))
    rest = sorted((i for i in range(len(sets)) if i not in drawn), key=lambda i: -unsure[i])
    return [sets[i] for i in sorted(drawn | set(rest[: keep - len(drawn)]))]


@dataclass
class Shared:
    """What every seed starts from and is judged by: sampled, loaded and read once per experiment."""

    sft: Path
    judge: HiddenRuleJudge  # the hidden rule's verdicts against SFT, on prompts no user asks
    pretraining: tuple[list[str], list[str]]  # PPO-ptx's texts, the gate's held-out texts
    sft_pool: list[str]  # K answers of SFT per judged answer, for the best-of-K baseline


def shared(settings: Settings, k: int) -> Shared:
    """SFT, its judge, the pretraining text and SFT's best-of-K answer pool."""
    sft = PolicyRegistry(settings.paths.registry).path(settings.train.loop.sft_version)
    judge = HiddenRuleJudge(sft)
    pool = sampled_responses(sft, judge.prompts, per_prompt=judge.per_prompt * k, seed=7_000)
    return Shared(sft, judge, load_pretraining(settings), pool)


def best_of_k(common: Shared, rm: Path, k: int, runtime: Runtime) -> dict:
    """The judge's verdict on SFT answers picked best of k by the reward model: what the RM is worth
    without any policy training (PPO has to beat it)."""
    answers, judge = common.sft_pool, common.judge
    prompts = [p for p in judge.prompts for _ in range(judge.per_prompt * k)]
    rewards = score(
        RewardModel.from_pretrained(rm, runtime, frozen=True),
        AutoTokenizer.from_pretrained(common.sft),
        prompts,
        answers,
        runtime=runtime,
    )
    picked = [
        answers[start + int(rewards[start : start + k].argmax())] for start in range(0, len(answers), k)
    ]
    return judge.answers(picked)


def run_seed(settings: Settings, plan: Plan, seed: int, common: Shared) -> list[RoundRow]:
    """Every round of one seed; its checkpoints go under plan.out/seed<seed>."""
    settings = settings.model_copy(
        update={
            "train": settings.train.model_copy(
                update={
                    "ppo": settings.train.ppo.model_copy(update={"seed": seed}),
                    "rm": settings.train.rm.model_copy(update={"seed": seed}),
                }
            )
        }
    )
    runtime = Runtime.resolve(settings.train)
    sft, judge = common.sft, common.judge
    serving, serving_adapter, rm_init = sft, None, sft
    ranked: list[RankedBy] = []
    rows: list[RoundRow] = []
    for number in range(1, plan.rounds + 1):
        started = time.time()
        round_dir = plan.out / f"seed{seed}" / f"round{number:02d}"
        last_rm = None if rm_init == sft else rm_init
        share = settings.gateway.labelling.random_share
        ranked += _collect(serving, plan, seed, number, last_rm, runtime, share)
        rankings, judge_set = split_for_judging(ranked, settings.train.loop)
        trained = train_candidate(
            RoundInputs(
                rankings,
                judge_set,
                TRAIN_PROMPTS,
                sft=sft,
                serving=serving,
                rm_init=rm_init,
                policy_init=None if serving == sft or serving_adapter else serving,
                policy_adapter=serving_adapter,
            ),
            round_dir,
            settings,
            runtime,
            *common.pretraining,
        )
        rm_init, candidate = round_dir / "rm", round_dir / "policy"
        promoted = False
        if trained.gate.passed:
            canary = HiddenRuleJudge(serving, TRAIN_PROMPTS, per_prompt=_CANARY_ANSWERS)(candidate)
            promoted = canary["rate"] > 0.5
        if promoted:
            serving = candidate
            serving_adapter = candidate / ADAPTER_DIR if settings.train.lora.enabled else None
        g = trained.gate.metrics
        served = judge(serving) if serving != sft else {**judge.base, "rate": 0.5, "interval_95": (0.5, 0.5)}
        row = RoundRow(
            seed=seed,
            round=number,
            rankings=len(ranked),
            rm_trained_on=int(trained.rm["train_rankings"]),
            rm_accuracy=g.get("judge_accuracy", trained.rm["heldout_accuracy"]),
            rm_calibration_error=g.get("judge_calibration_error", float("nan")),
            kl_from_sft=g.get("kl_from_sft", float("nan")),
            alignment_tax=(g["candidate_ptx_loss"] / g["sft_ptx_loss"]) if g.get("sft_ptx_loss") else None,
            gate="passed" if trained.gate.passed else "; ".join(trained.gate.reasons),
            promoted=promoted,
            candidate_win=judge(candidate)["rate"],
            serving_win=served["rate"],
            serving_interval_95=tuple(served["interval_95"]),
            serving_answer_chars=served["answer_chars"],
            best_of_k_win=best_of_k(common, rm_init, plan.k, runtime)["rate"],
            seconds=time.time() - started,
        )
        rows.append(row)
        low, high = row.serving_interval_95
        log.info(
            "seed %d round %d: %d rankings, RM acc %.2f, KL %.1f, gate %s, %s; serving wins %.0f%% vs SFT "
            "(%.0f-%.0f%%) [%.0fs]",
            seed,
            number,
            row.rankings,
            row.rm_accuracy,
            row.kl_from_sft,
            row.gate,
            "promoted" if promoted else "kept the serving version",
            100 * row.serving_win,
            100 * low,
            100 * high,
            row.seconds,
        )
    return rows


def _table(rows: list[RoundRow]) -> str:
    lines = [
        "| seed | round | rankings | RM accuracy (held out) | RM calibration error | KL from SFT | alignment tax | gate | promoted "
        "| candidate vs SFT | serving vs SFT (95%) | serving's answer chars | best-of-K SFT by the RM vs SFT "
        "| seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        low, high = r.serving_interval_95
        tax = f"{r.alignment_tax:.3f}" if r.alignment_tax is not None else "-"
        lines.append(
            f"| {r.seed} | {r.round} | {r.rankings} | {r.rm_accuracy:.2f} | {r.rm_calibration_error:.2f} "
            f"| {r.kl_from_sft:.1f} | {tax} "
            f"| {r.gate} | {'yes' if r.promoted else 'no'} | {r.candidate_win:.0%} "
            f"| {r.serving_win:.0%} ({low:.0%}-{high:.0%}) | {r.serving_answer_chars:.0f} "
            f"| {r.best_of_k_win:.0%} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def _plot(rows: list[RoundRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for seed in sorted({r.seed for r in rows}):
        mine = [r for r in rows if r.seed == seed]
        x = [0] + [r.rankings for r in mine]
        y = [0.5] + [r.serving_win for r in mine]
        err = [
            [0.0] + [r.serving_win - r.serving_interval_95[0] for r in mine],
            [0.0] + [r.serving_interval_95[1] - r.serving_win for r in mine],
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"seed {seed}")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.axhline(0.85, color="tab:green", linestyle=":", linewidth=1, label="goal 85%")
    ax.set_ylim(0, 1)
    ax.set_xlabel("rankings collected")
    ax.set_ylabel("serving version's win rate vs SFT")
    ax.set_title("Learning curve: the hidden rule's preference (95% intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(settings: Settings, plan: Plan) -> tuple[Path, list[RoundRow]]:
    """Run every seed; write rounds.jsonl, experiment.md and learning_curve.png under plan.out and
    return the page and the rows."""
    plan.out.mkdir(parents=True, exist_ok=True)
    base = ensure_base_policy(settings)
    log.info(
        "experiment: %d seeds x %d rounds, %d rankings of %d per round, from %s (%s); results in %s",
        len(plan.seeds),
        plan.rounds,
        plan.rankings_per_prompt * len(TRAIN_PROMPTS),
        plan.k,
        settings.train.loop.sft_version,
        base,
        plan.out,
    )
    common = shared(settings, plan.k)
    rows: list[RoundRow] = []
    started = time.time()
    with open(plan.out / "rounds.jsonl", "w") as f:
        for seed in plan.seeds:
            for row in run_seed(settings, plan, seed, common):
                rows.append(row)
                f.write(json.dumps(asdict(row)) + "\n")
                f.flush()
    final = [r.serving_win for r in rows if r.round == plan.rounds]
    summary = (
        f"Final serving version's win rate vs SFT by the hidden rule: median {statistics.median(final):.0%} "
        f"over {len(final)} seeds (each: {', '.join(f'{w:.0%}' for w in final)}); "
        f"{time.time() - started:.0f} s in all."
    )
    _plot(rows, plan.out / "learning_curve.png")
    page = plan.out / "experiment.md"
    page.write_text(
        f"# Experiment: {len(plan.seeds)} seeds x {plan.rounds} rounds\n\n{summary} SFT's answers: "
        f"{common.judge.base['answer_chars']:.0f} characters on average.\n\n{_table(rows)}\n\n"
        "![learning curve](learning_curve.png)\n"
    )
    log.info("experiment: %s Table: %s", summary, page)
    return page, rows
