"""Test-split statistics against scipy and hand-computed values."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from steerlab.data.items import MCItem
from steerlab.experiment.stats import (
    constant_letter,
    correctness,
    letter_counts,
    mean,
    paired_delta,
    shortest_answer,
    t_interval,
)


def item(answer: int, n: int = 3) -> MCItem:
    return MCItem(id=f"q{answer}", question="Which?", choices=tuple(f"c{i}" for i in range(n)), answer=answer)


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0], [-2.5, 7.25]])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_t_interval_matches_scipy(values: list[float], level: float) -> None:
    n = len(values)
    expected = stats.t.interval(level, n - 1, loc=sum(values) / n, scale=stats.sem(values))
    low, high = t_interval(values, level)
    assert low == pytest.approx(expected[0], rel=1e-12, abs=1e-12)
    assert high == pytest.approx(expected[1], rel=1e-12, abs=1e-12)


def test_t_interval_by_hand() -> None:
    # mean 2.5, sample sd sqrt(5/3), t(0.975, 3) = 3.182446305284263
    low, high = t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert (low, high) == (pytest.approx(2.5 - half, rel=1e-12), pytest.approx(2.5 + half, rel=1e-12))


def test_t_interval_degenerate_inputs() -> None:
    assert t_interval([]) == (None, None)
    assert t_interval([0.7]) == (None, None)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)  # no spread: a zero-width interval


def test_paired_delta() -> None:
    steered = [1.0, 1.0, 0.0, 1.0, 1.0]
    baseline = [0.0, 1.0, 0.0, 0.0, 1.0]
    result = paired_delta(steered, baseline)
    differences = [1.0, 0.0, 0.0, 1.0, 0.0]
    assert result["delta"] == pytest.approx(0.4)
    assert result["delta_ci95"] == list(t_interval(differences))
    expected = stats.t.interval(0.95, 4, loc=0.4, scale=stats.sem(differences))
    assert result["delta_ci95"] == [pytest.approx(expected[0]), pytest.approx(expected[1])]
    assert paired_delta([1.0], [0.0]) == {"delta": 1.0, "delta_ci95": [None, None]}
    with pytest.raises(ValueError):
        paired_delta([1.0, 0.0], [1.0])


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
