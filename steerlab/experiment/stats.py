"""Test-split statistics: accuracies, paired differences with confidence intervals, constant-answer controls."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from scipy import stats

from steerlab.data.items import MCItem
from steerlab.data.prompts import LETTERS


def correctness(predicted: Sequence[int], items: Sequence[MCItem]) -> list[float]:
    """1.0 where the predicted choice is the item's answer, else 0.0."""
    return [float(p == item.answer) for p, item in zip(predicted, items, strict=True)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """Two-sided t-interval of the mean; (None, None) when it cannot be computed (fewer than two values)."""
    n = len(values)
    if n < 2:
        return None, None
    centre = mean(values)
    spread = math.sqrt(sum((v - centre) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * spread / math.sqrt(n)
    return centre - half, centre + half


def paired_delta(steered: Sequence[float], baseline: Sequence[float]) -> dict[str, object]:
    """Mean of per-item differences (steered - baseline correctness) with its paired 95% t-interval."""
    differences = [s - b for s, b in zip(steered, baseline, strict=True)]
    low, high = t_interval(differences)
    return {"delta": mean(differences), "delta_ci95": [low, high]}


def letter_counts(indices: Sequence[int], width: int) -> dict[str, int]:
    """How often each letter occurs, with every letter up to ``width`` present (zeros included)."""
    counts = Counter(indices)
    return {LETTERS[i]: counts.get(i, 0) for i in range(width)}


def constant_letter(items: Sequence[MCItem]) -> dict[str, object]:
    """The best accuracy a model answering one fixed letter for everything would get."""
    counts = Counter(item.answer for item in items)
    letter, hits = max(sorted(counts.items()), key=lambda kv: kv[1])
    return {"letter": LETTERS[letter], "accuracy": hits / len(items)}


def shortest_answer(answer_lengths: Sequence[Sequence[int]], items: Sequence[MCItem]) -> dict[str, object]:
    """The accuracy of always picking the choice with the fewest answer tokens (ties: the first one).

    Summed choice likelihood favours short answers, and a model pushed far off its distribution by any large
    vector falls back on exactly that: when the right answer is often the shortest, this is the bar a steering
    vector (and the random direction) must beat.
    """
    picks = [min(range(len(lengths)), key=lambda k: (lengths[k], k)) for lengths in answer_lengths]
    return {"accuracy": mean(correctness(picks, items))}
