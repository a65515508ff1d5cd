"""The text the tiny default policy is built from: generated, deterministic for a seed.

Two kinds of text: short chat dialogues (simple instructions with correct answers), which teach
the chat format and give the loop something to improve, and plain sentences, which serve as the
"pretraining" distribution for PPO-ptx's LM-loss term.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "fox", "bear", "duck", "frog"]
PLACES = ["the park", "the house", "the river", "the hill", "the town", "the forest"]
VERBS = ["sees", "likes", "finds", "follows", "helps", "watches"]
WORDS = ["apple", "tree", "book", "stone", "cloud", "river", "lamp", "chair", "song", "boat"]


@dataclass(frozen=True)
class Dialogue:
    """One instruction and its reference answer."""

    prompt: str
    response: str


def _dialogue(rng: random.Random) -> Dialogue:
    kind = rng.randrange(8)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(10)
        return Dialogue(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
    if kind == 1:
        name = rng.choice(NAMES)
        return Dialogue(f"Say hello to {name}.", f"Hello, {name}!")
    if kind == 2:
        word = rng.choice(WORDS)
        return Dialogue(f"Repeat the word {word} twice.", f"{word} {word}")
    if kind == 3:
        n = rng.randrange(2, 7)
        return Dialogue(f"Count to {n}.", " ".join(str(i) for i in range(1, n + 1)) + ".")
    if kind == 4:
        n = rng.randrange(20)
        parity = "even" if n % 2 == 0 else "odd"
        return Dialogue(f"Is {n} even or odd?", f"{n} is {parity}.")
    if kind == 5:
        animal = rng.choice(ANIMALS)
        color = rng.choice(COLORS)
        return Dialogue(
            f"Describe a {animal}.", f"The {animal} is {color} and it lives near {rng.choice(PLACES)}."
        )
    if kind == 6:
        items = rng.sample(WORDS, 3)
        return Dialogue(f"Reverse the list: {', '.join(items)}.", ", ".join(reversed(items)) + ".")
    n = rng.randrange(1, 19)
    return Dialogue(f"What comes after {n}?", f"After {n} comes {n + 1}.")


def _sentence(rng: random.Random) -> str:
    return (
        f"The {rng.choice(COLORS)} {rng.choice(ANIMALS)} {rng.choice(VERBS)} "
        f"the {rng.choice(ANIMALS)} near {rng.choice(PLACES)}."
    )


def dialogues(n: int, seed: int) -> list[Dialogue]:
    """n generated instruction/answer pairs."""
    rng = random.Random(seed)
    return [_dialogue(rng) for _ in range(n)]


def pretraining_texts(n: int, seed: int) -> list[str]:
    """n short plain-text paragraphs (the PPO-ptx pretraining distribution)."""
    rng = random.Random(seed + 1_000_003)
    return [" ".join(_sentence(rng) for _ in range(rng.randrange(1, 4))) for _ in range(n)]
