"""The simulated users' hidden rule: what it prefers, and that a non-answer cannot game it."""

from synthetic.judge import win_rate
from synthetic.task import hidden_score, rank


def test_blue_then_green_then_any_colour_and_shorter_among_equals():
    blue, green, red = "The fox is blue.", "The fox is green.", "The fox is red."
    longer_blue = "The fox is blue and it lives near the forest."
    assert rank([red, longer_blue, green, blue]) == [[3], [1], [2], [0]]
    assert rank([blue, "The cat is blue."]) == [[0, 1]]  # equal scores tie


def test_an_answer_that_describes_nothing_loses_to_any_description():
    # A rule that only ranked colours and then length would prefer "." to every answer without
    # blue or green (6 colours of 8): a policy could win ~75% of comparisons by saying nothing.
    description = "The fox is purple and it lives near the forest, far from the town and the river."
    for nothing in (".", "", "The fox Bo.", "TheThe book"):
        assert hidden_score(nothing) < hidden_score(description), nothing
    assert win_rate([".", "The fox Bo."], [description, description]) == 0.0
