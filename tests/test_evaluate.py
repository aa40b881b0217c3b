"""Test-split statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from steerlab.data.items import MCItem
from steerlab.experiment.stats import (
    constant_letter,
    correctness,
    letter_counts,
    mean,
    shortest_answer,
)


def item(answer: int, n: int = 3) -> MCItem:
    return MCItem(id=f"q{answer}", question="Which?", choices=tuple(f"c{i}" for i in range(n)), answer=answer)


def test_constant_letter_takes_the_most_common_answer_and_breaks_ties_alphabetically() -> None:
    items = [item(2), item(1), item(2), item(0), item(1)]
    assert constant_letter(items) == {"letter": "B", "accuracy": 0.4}
    assert constant_letter([item(2), item(2), item(0)]) == {"letter": "C", "accuracy": pytest.approx(2 / 3)}
    assert constant_letter([item(1, n=2)]) == {"letter": "B", "accuracy": 1.0}


def test_correctness_counts_and_mean() -> None:
    items = [item(0), item(2), item(1)]
    assert correctness([0, 1, 1], items) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        correctness([0, 1], items)
    assert letter_counts([0, 2, 2, 0, 0], 4) == {"A": 3, "B": 0, "C": 2, "D": 0}
    assert mean([1.0, 0.0, 0.5]) == 0.5
    assert math.isnan(mean([]))


def test_shortest_answer_picks_the_fewest_tokens_first_on_ties() -> None:
    items = [item(0), item(2), item(1), item(1)]
    lengths = [[1, 3, 2], [4, 4, 2], [2, 2, 5], [3, 1, 1]]
    # picks: 0 (right), 2 (right), 0 on a tie (wrong), 1 on a tie (right)
    assert shortest_answer(lengths, items) == {"accuracy": 0.75}
