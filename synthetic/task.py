"""A synthetic preference task with a hidden rule, for the learning tests and benchmarks.

The prompts are the tiny model's own ("Describe a fox."); responses vary the colour and the place.
The hidden rule that decides which response is better: blue things are best, then green, then any
other colour; an answer that names no colour does not describe the thing asked about and is worst
(a person asked for a description, not for "."); among equals the shorter answer wins. The
trainer never sees the rule, only rankings it produced.
"""

from __future__ import annotations

import random

from synthetic.corpus import ANIMALS, COLORS, PLACES
from trainer.data import Ranking

COLOR_VALUE = dict.fromkeys(COLORS, 0.0) | {"blue": 2.0, "green": 1.0}
NO_COLOR = -1.0


def hidden_score(response: str) -> float:
    """The rule behind every synthetic ranking (and the simulated users' taste)."""
    words = response.lower().replace(".", " ").replace(",", " ").split()
    return max((COLOR_VALUE[w] for w in words if w in COLOR_VALUE), default=NO_COLOR) - len(response) / 1000.0


def prompts(n: int, seed: int) -> list[str]:
    """n prompts of the kind the task is about."""
    rng = random.Random(seed)
    return [f"Describe a {rng.choice(ANIMALS)}." for _ in range(n)]


def _response(rng: random.Random, prompt: str) -> str:
    animal = prompt.removeprefix("Describe a ").removesuffix(".")
    return f"The {animal} is {rng.choice(COLORS)} and it lives near {rng.choice(PLACES)}."


def rank(responses: list[str]) -> list[list[int]]:
    """Best-first ranking of responses by the hidden rule; equal scores tie."""
    scores = [hidden_score(r) for r in responses]
    groups: dict[float, list[int]] = {}
    for i, s in enumerate(scores):
        groups.setdefault(s, []).append(i)
    return [groups[s] for s in sorted(groups, reverse=True)]


def rankings(n: int, k: int, seed: int) -> list[Ranking]:
    """n prompts, each with k distinct responses ranked by the hidden rule."""
    rng = random.Random(seed)
    out = []
    for prompt in prompts(n, seed):
        responses: list[str] = []
        while len(responses) < k:
            r = _response(rng, prompt)
            if r not in responses:
                responses.append(r)
        out.append(Ranking(prompt, responses, rank(responses)))
    return out


def demonstrations(n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs in the policy's ordinary style (any colour)."""
    rng = random.Random(seed)
    return [(p, _response(rng, p)) for p in prompts(n, seed)]
