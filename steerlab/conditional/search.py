"""Choosing where and how a condition is checked: layers, threshold and comparator, by F1 on validation.

Every threshold that changes a decision is tried (the midpoints between consecutive distinct scores, plus one
below and one above them all), not a grid, so a threshold planted between two clusters is found exactly. F1 ties
are broken by the margin (the smallest distance of any score to the threshold, in units of the scores' standard
deviation: a perfect F1 with a wide gap is better evidence than one with a hair's breadth), then by fewer layers,
then by lower layers. A layer set holds when the score passes the threshold at any of its layers, as in CAST.

Example::

    import torch
    from steerlab.conditional.search import search_point
    pos = {3: torch.tensor([0.6, 0.7, 0.9])}
    neg = {3: torch.tensor([0.1, 0.2, 0.4])}
    point = search_point(pos, neg)
    assert point.layers == (3,) and point.comparator == ">" and abs(point.threshold - 0.5) < 1e-9
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from steerlab.errors import ConfigError
from steerlab.psr.evaluate import wilson

Comparator = Literal[">", "<"]
COMPARATORS: tuple[Comparator, ...] = (">", "<")
_BOOTSTRAP_DRAWS = 2000


def check_comparator(value: str) -> Comparator:
    for name in COMPARATORS:
        if value == name:
            return name
    raise ConfigError(f"unknown comparator '{value}'; choose '>' (holds above the threshold) or '<' (below)")


def holds(scores: torch.Tensor, threshold: float, comparator: Comparator) -> torch.Tensor:
    """Where the condition holds, elementwise (strict comparison: a score equal to the threshold does not)."""
    return scores > threshold if comparator == ">" else scores < threshold


@dataclass(frozen=True)
class ConditionPoint:
    """Where and how a condition is checked, with the validation F1 and margin that chose it."""

    layers: tuple[int, ...]
    threshold: float
    comparator: Comparator
    f1: float
    margin: float


@dataclass(frozen=True)
class Rate:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Metrics:
    """Precision, recall and F1 of a condition on labelled prompts, each with a 95% interval.

    Precision and recall get Wilson intervals; F1 a percentile bootstrap over both sets (seeded).
    """

    precision: Rate
    recall: Rate
    f1: Rate
    positives: int
    negatives: int


def _f1(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _candidates(values: np.ndarray) -> np.ndarray:
    unique = np.unique(values)
    inner = (unique[:-1] + unique[1:]) / 2
    return np.concatenate([[unique[0] - 1.0], inner, [unique[-1] + 1.0]])


def search_point(positive: Mapping[int, torch.Tensor], negative: Mapping[int, torch.Tensor], *,
                 max_layers: int = 1) -> ConditionPoint:
    """The best (layers, threshold, comparator) for telling ``positive`` from ``negative`` scores.

    ``positive[layer]`` and ``negative[layer]`` are the validation scores at each candidate layer; layer sets of up
    to ``max_layers`` layers are tried.
    """
    layers = sorted(positive)
    if not layers or sorted(negative) != layers:
        raise ConfigError("the search needs scores of both sets at the same, non-empty set of layers")
    if max_layers < 1:
        raise ConfigError(f"max_layers must be at least 1, got {max_layers}")
    pos = {layer: positive[layer].double().cpu().numpy() for layer in layers}
    neg = {layer: negative[layer].double().cpu().numpy() for layer in layers}
    if any(len(pos[layer]) == 0 or len(neg[layer]) == 0 for layer in layers):
        raise ConfigError("the search needs at least one positive and one negative score")
    best: tuple[float, float, int, tuple[int, ...]] | None = None
    chosen: ConditionPoint | None = None
    for size in range(1, min(max_layers, len(layers)) + 1):
        for subset in itertools.combinations(layers, size):
            p = np.stack([pos[layer] for layer in subset])  # (k, n_pos)
            n = np.stack([neg[layer] for layer in subset])
            spread = np.concatenate([p, n], axis=1).std(axis=1)
            spread = np.where(spread > 0, spread, 1.0)[:, None]
            for threshold in _candidates(np.concatenate([p.ravel(), n.ravel()])):
                margin = float(min((np.abs(p - threshold) / spread).min(), (np.abs(n - threshold) / spread).min()))
                for comparator in COMPARATORS:
                    fires_p = (p > threshold if comparator == ">" else p < threshold).any(axis=0)
                    fires_n = (n > threshold if comparator == ">" else n < threshold).any(axis=0)
                    tp = int(fires_p.sum())
                    f1 = _f1(tp, int(fires_n.sum()), len(fires_p) - tp)
                    # Larger is better in every key: F1, then margin, then fewer and lower layers.
                    key = (f1, margin, -size, tuple(-layer for layer in subset))
                    if best is None or key > best:
                        best = key
                        chosen = ConditionPoint(subset, float(threshold), comparator, f1, margin)
    assert chosen is not None
    return chosen


def fires(point_layers: Sequence[int], scores: Mapping[int, torch.Tensor], threshold: float,
          comparator: Comparator) -> torch.Tensor:
    """Where a condition checked at ``point_layers`` holds: any layer's score passes the threshold."""
    return torch.stack([holds(scores[layer], threshold, comparator) for layer in point_layers]).any(dim=0)


def metrics(positive_fires: torch.Tensor, negative_fires: torch.Tensor, *, seed: int = 0) -> Metrics:
    """Precision, recall and F1 of a condition that fired on ``positive_fires`` / ``negative_fires``."""
    pos = positive_fires.bool().cpu().numpy()
    neg = negative_fires.bool().cpu().numpy()
    if len(pos) == 0 or len(neg) == 0:
        raise ConfigError("metrics need at least one positive and one negative prompt")
    tp, fp = int(pos.sum()), int(neg.sum())
    fn = len(pos) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    p_low, p_high = wilson(tp, tp + fp) if tp + fp else (0.0, 1.0)
    r_low, r_high = wilson(tp, len(pos))
    rng = np.random.default_rng(seed)
    tp_draws = pos[rng.integers(0, len(pos), size=(_BOOTSTRAP_DRAWS, len(pos)))].sum(axis=1)
    fp_draws = neg[rng.integers(0, len(neg), size=(_BOOTSTRAP_DRAWS, len(neg)))].sum(axis=1)
    f1_draws = np.where(tp_draws > 0, 2 * tp_draws / np.maximum(tp_draws + fp_draws + len(pos), 1), 0.0)
    f_low, f_high = np.percentile(f1_draws, [2.5, 97.5])
    return Metrics(Rate(precision, p_low, p_high), Rate(tp / len(pos), r_low, r_high),
                   Rate(_f1(tp, fp, fn), float(f_low), float(f_high)), len(pos), len(neg))
