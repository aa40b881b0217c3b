"""Test-split statistics: accuracies, paired differences with bootstrap intervals, ranks among random directions,
constant-answer controls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from steerlab.data.items import MCItem
from steerlab.data.prompts import LETTERS


def correctness(predicted: Sequence[int], items: Sequence[MCItem]) -> list[float]:
    """1.0 where the predicted choice is the item's answer, else 0.0."""
    return [float(p == item.answer) for p, item in zip(predicted, items, strict=True)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


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


BOOTSTRAP_DRAWS = 4000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval (``low``/``high`` None when it cannot be computed)."""

    value: float
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> int:
        """+1 when the interval lies above 0, -1 when below, 0 when it contains 0 or is missing."""
        if self.low is None or self.high is None:
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


def paired_bootstrap(differences: Sequence[Sequence[float]], *, draws: int = BOOTSTRAP_DRAWS,
                     seed: int = BOOTSTRAP_SEED) -> Estimate:
    """Mean per-item difference over seeds, with a percentile interval from a two-level bootstrap.

    ``differences[s][i]`` is item ``i``'s paired difference under seed ``s``. The seeds are re-splits of one pool,
    not independent samples, so both levels are resampled: seeds with replacement, then items within each drawn
    seed. One seed reduces to the ordinary paired bootstrap over items. Deterministic for a given ``seed``.
    """
    per_seed = [np.asarray(d, dtype=np.float64) for d in differences if len(d)]
    if not per_seed:
        return Estimate(float("nan"), None, None)
    value = float(np.mean([d.mean() for d in per_seed]))
    if all(len(d) < 2 for d in per_seed) and len(per_seed) < 2:
        return Estimate(value, None, None)
    rng = np.random.default_rng(seed)
    # Seeds drawn with replacement for every draw, then each drawn slot's items resampled on their own: a seed
    # drawn twice in one draw counts as two resamples, not one resample twice.
    picked = rng.integers(0, len(per_seed), size=(draws, len(per_seed)))
    slots = np.empty(picked.shape)
    for s, d in enumerate(per_seed):
        where = picked == s
        slots[where] = d[rng.integers(0, len(d), size=(int(where.sum()), len(d)))].mean(axis=1)
    totals = slots.mean(axis=1)
    low, high = np.percentile(totals, [2.5, 97.5])
    return Estimate(value, float(low), float(high))


def rank_p_value(real: float, random: Sequence[float]) -> tuple[int, float]:
    """The real vector's rank among random directions (1 = best; ties counted against it) and the permutation
    p-value (1 + #random at least as good) / (1 + #random): the chance a random direction of the same norm would
    rank as high."""
    as_good = sum(1 for r in random if r >= real)
    return 1 + as_good, (1 + as_good) / (1 + len(random))
