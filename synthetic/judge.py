"""The simulated users' hidden rule as a judge of whole policies: how often it prefers one
checkpoint's sampled answers to another's, on prompts no user asked, with a 95% interval.

The demo's report and the experiment runner judge with it; the trainer never sees it.
"""

from __future__ import annotations

from pathlib import Path

from promotion.sequential import wilson
from synthetic.corpus import ANIMALS
from synthetic.task import hidden_score
from trainer.evaluate import sampled_responses

TRAIN_PROMPTS = [f"Describe a {a}." for a in ANIMALS[:7]]  # what the simulated users ask
HELDOUT_PROMPTS = [f"Describe a {a}." for a in ANIMALS[7:]]  # what they never ask: the judge's
SAMPLES_PER_PROMPT = 64  # 3 held-out prompts: 192 pairs


def win_rate(answers_a: list[str], answers_b: list[str]) -> float:
    """How often the hidden rule prefers a's answer over b's (ties count half)."""
    wins = sum(
        1.0 if hidden_score(a) > hidden_score(b) else 0.5 if hidden_score(a) == hidden_score(b) else 0.0
        for a, b in zip(answers_a, answers_b)
    )
    return wins / len(answers_a)


class HiddenRuleJudge:
    """Judges checkpoints against one base checkpoint (its answers are sampled once)."""

    def __init__(
        self, base: Path, prompts: list[str] = HELDOUT_PROMPTS, per_prompt: int = SAMPLES_PER_PROMPT
    ):
        self.prompts, self.per_prompt = prompts, per_prompt
        self.pairs = per_prompt * len(prompts)
        self.base_answers = sampled_responses(base, prompts, per_prompt=per_prompt)
        self.base = {"answer_chars": sum(map(len, self.base_answers)) / len(self.base_answers)}
        self._judged: dict[Path, dict] = {}  # a report asks about the same version more than once

    def __call__(self, policy: Path) -> dict:
        """The judgement of a checkpoint's sampled answers (see answers())."""
        if policy not in self._judged:
            self._judged[policy] = self.answers(
                sampled_responses(policy, self.prompts, per_prompt=self.per_prompt)
            )
        return self._judged[policy]

    def answers(self, answers: list[str]) -> dict:
        """{"rate", "interval_95", "pairs", "answer_chars"}: the hidden rule's preference for these
        answers (per_prompt per prompt, in order) over the base's, and how long they are (a falling
        length is how a policy games a rule that prefers shorter answers among equals)."""
        rate = win_rate(answers, self.base_answers)
        return {
            "rate": rate,
            "interval_95": wilson(rate * self.pairs, self.pairs),
            "pairs": self.pairs,
            "answer_chars": sum(map(len, answers)) / len(answers),
        }
