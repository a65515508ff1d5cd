"""`alignloop report`: InstructGPT's figures in miniature, from the registry's lineage and people's
comparisons, as a markdown page with PNG plots.

- Win rate against the SFT version, per version, with a 95% interval: from people's blinded
  comparisons across versions (the gateway's evidence store: labelling items and mixed requests,
  as the leaderboard reads them) where there are any, and from a `judge` the caller supplies (the
  demo's: its simulated users' hidden rule).
- Each candidate's canary decision: people's verdicts against the version it was tried against.
- The alignment tax per version: the held-out pretraining LM loss the gate measured for the
  candidate, against SFT's (PPO-ptx exists to keep this near 1x).
- The reward model's accuracy on held-out comparisons (the gate's judge set: prompts and raters it
  was not trained on), per round, and each round's gate decision.
- Reward-hacking signals: each version's answer length (sampled answers to the gate's held-out
  prompts, in tokens) and KL from SFT, and the drift of the reward model's score between rounds
  (the new RM's score of the serving version's answers less the score that version had at its own
  gate): answers growing, KL climbing or the RM's scale sliding while people's win rate stalls is
  the reward model being optimised against rather than people's taste.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from promotion.evidence import EvidenceStore
from registry.store import PolicyRegistry

# (version) -> {"rate", "interval_95": (low, high), "pairs"}: a win rate against SFT from elsewhere.
Judge = Callable[[str], dict]


@dataclass
class VersionRow:
    """One version's line in the report."""

    version: str
    source: str
    round: int | None = None
    decision: str | None = None
    canary: dict | None = None  # the canary's decision with its evidence (promotion = canary)
    rm_accuracy: float | None = None
    ptx_loss: float | None = None
    sft_ptx_loss: float | None = None
    kl_from_sft: float | None = None
    answer_tokens: float | None = None  # mean sampled answer length at the gate
    rm_drift: float | None = None  # this round's RM score of the serving version less its own gate's
    people: dict | None = None  # win rate against SFT from people's comparisons
    judged: dict | None = None  # win rate against SFT from the judge

    @property
    def alignment_tax(self) -> float | None:
        """Pretraining LM loss relative to SFT's (1.0: no tax)."""
        if self.ptx_loss is None or not self.sft_ptx_loss:
            return None
        return self.ptx_loss / self.sft_ptx_loss


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def versions(registry: PolicyRegistry) -> list[VersionRow]:
    """Every version with what its lineage says (trainer versions carry a round and a gate)."""
    rows = []
    infos = [registry.info(name) for name in registry.names()]
    # A version with no gate of its own (SFT, an import) was measured as the serving side of a round.
    served_length = {
        info.parent: info.extra["gate"].get("serving_answer_tokens")
        for info in infos
        if info.extra.get("gate")
    }
    for info in infos:
        name = info.name
        gate = info.extra.get("gate", {})
        # The gate's judge set (held-out prompts and raters) first; the RM's own split where there is none.
        accuracy = _finite(gate.get("judge_accuracy"))
        accuracy = accuracy if accuracy is not None else _finite(info.metrics.get("rm_heldout_accuracy"))
        rows.append(
            VersionRow(
                name,
                info.source,
                info.extra.get("round"),
                gate.get("decision"),
                registry.decision(name),
                accuracy,
                _finite(gate.get("candidate_ptx_loss")),
                _finite(gate.get("sft_ptx_loss")),
                _finite(gate.get("kl_from_sft")),
                _finite(gate.get("candidate_answer_tokens", served_length.get(name))),
                _finite(gate.get("rm_score_drift")),
            )
        )
    return rows


def people_board(settings: Settings, registry: PolicyRegistry) -> dict | None:
    """The leaderboard of people's cross-version verdicts kept by the gateway of this state
    directory, or None if no gateway kept any here."""
    if not settings.paths.evidence.exists():
        return None
    names = registry.names()
    return EvidenceStore(settings.paths.evidence).leaderboard(names[0] if names else None, registry.current())


def _canary(decision: dict | None) -> str:
    if not decision:
        return ""
    e = decision.get("evidence") or {}
    if not e.get("n"):
        return decision["decision"].replace("_", " ")
    low, high = e["interval_95"]
    return (
        f"{decision['decision'].replace('_', ' ')}: {e['wins']}/{e['n']} vs {decision.get('against')} "
        f"({low:.0%}-{high:.0%})"
    )


def _plots(rows: list[VersionRow], out: Path, judge_name: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    written = []
    rated = [
        (r, src)
        for r in rows
        for src in ("people", "judged")
        if getattr(r, src) and getattr(r, src).get("rate") is not None
    ]
    if rated:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for src, marker in (("people", "o"), ("judged", "s")):
            pts = [(r.version, getattr(r, src)) for r, s in rated if s == src]
            if not pts:
                continue
            x = [v for v, _ in pts]
            y = [w["rate"] for _, w in pts]
            err = [
                [w["rate"] - w["interval_95"][0] for _, w in pts],
                [w["interval_95"][1] - w["rate"] for _, w in pts],
            ]
            ax.errorbar(
                x, y, yerr=err, fmt=marker, capsize=4, label="people" if src == "people" else judge_name
            )
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("win rate vs SFT")
        ax.set_title("How often each version's answer is preferred to SFT's (95% intervals)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "win_rate.png", dpi=110)
        plt.close(fig)
        written.append("win_rate.png")
    taxed = [r for r in rows if r.alignment_tax is not None]
    accuracy = [r for r in rows if r.rm_accuracy is not None]
    if taxed or accuracy:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
        left.bar([r.version for r in taxed], [r.alignment_tax for r in taxed], color="tab:orange")
        left.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        left.set_title("alignment tax: pretraining loss / SFT's")
        right.plot([r.round for r in accuracy], [r.rm_accuracy for r in accuracy], marker="o")
        right.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        right.set_ylim(0, 1)
        right.set_xlabel("round")
        right.set_title("reward model: held-out accuracy")
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=110)
        plt.close(fig)
        written.append("training.png")
    return written


def _rate(w: dict | None) -> str:
    if not w or w.get("rate") is None:
        return ""
    low, high = w["interval_95"]
    n = w.get("comparisons", w.get("pairs"))
    return f"{w['rate']:.0%} ({low:.0%}-{high:.0%}, n={n})"


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def write(
    rows: list[VersionRow],
    out: Path,
    serving: str | None,
    judge_name: str = "judge",
    board: dict | None = None,
) -> Path:
    """Write report.md and its plots into `out`; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(rows, out, judge_name)
    lines = [
        "# alignloop report",
        "",
        f"Serving: {serving or 'nothing'}. Win rates are against the SFT version ({rows[0].version if rows else '-'}), "
        "ties count half; intervals are 95% (people's: bootstrap over rankings; the others: Wilson).",
        "",
        f"| version | source | round | gate | canary: people's verdicts | RM held-out accuracy | KL from SFT | "
        f"answer tokens | RM score drift | alignment tax | vs SFT, people | vs SFT, {judge_name} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.version}{' (serving)' if r.version == serving else ''} | {r.source} | {r.round or ''} | "
            f"{r.decision or ''} | {_canary(r.canary)} | {_num(r.rm_accuracy, '.2f')} | {_num(r.kl_from_sft, '.2f')} | "
            f"{_num(r.answer_tokens, '.1f')} | {_num(r.rm_drift, '+.2f')} | "
            f"{_num(r.alignment_tax, '.3f')} | {_rate(r.people)} | {_rate(r.judged)} |"
        )
    if board and board.get("versions"):
        lines += [
            "",
            f"People's leaderboard ({board['outcomes']} pairwise outcomes across versions; "
            "Bradley-Terry scores, 95% intervals by bootstrap over rankings):",
            "",
            "| version | score | interval |",
            "|---|---|---|",
        ]
        for v in board["versions"]:
            interval = v["interval_95"]
            lines.append(
                f"| {v['version']} | {v['score']:.2f} | "
                f"{f'{interval[0]:.2f} to {interval[1]:.2f}' if interval else ''} |"
            )
    lines += [""] + [f"![{p}]({p})" for p in plots]
    page = out / "report.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def build(
    settings: Settings,
    out: Path,
    judge: Judge | None = None,
    judge_name: str = "judge",
    judged_versions: list[str] | None = None,
) -> Path:
    """The report of this state directory's registry (and labelling queue, if here) into `out`."""
    registry = PolicyRegistry(settings.paths.registry)
    rows = versions(registry)
    board = people_board(settings, registry)
    by_version = {v["version"]: v for v in (board or {}).get("versions", [])}
    for r in rows:
        r.people = (by_version.get(r.version) or {}).get("vs_sft")
        if r.people and not r.people.get("comparisons"):
            r.people = None
        if judge is not None and r.version in (judged_versions or []):
            r.judged = judge(r.version)
    return write(rows, out, registry.current(), judge_name, board)
