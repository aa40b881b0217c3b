"""The typed results of a ``steerlab run``; :meth:`RunReport.to_dict` renders them to JSON-ready data at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from steerlab.core.positions import Positions
from steerlab.experiment.compare import SFTComparison
from steerlab.experiment.retention import Retention
from steerlab.experiment.stats import Estimate, mean

Verdict = Literal["directional", "disruption only", "no change", "harmful"]

VERDICT_TEXT: dict[str, str] = {
    "directional": "the vector beats random directions of its norm (directional gain above 0)",
    "disruption only": "accuracy rose, but no more than random directions of the same norm raised it",
    "no change": "no reliable change in test accuracy",
    "harmful": "steering lowered test accuracy",
}


def verdict(delta: Estimate, directional_gain: Estimate) -> Verdict:
    """What the evidence supports, from the two intervals: directional gain first, then the plain delta."""
    if directional_gain.excludes_zero > 0:
        return "directional"
    if delta.excludes_zero > 0:
        return "disruption only"
    if delta.excludes_zero < 0:
        return "harmful"
    return "no change"


@dataclass(frozen=True)
class SweepCell:
    """One validation grid point: accuracy with ``+strength * vector`` and with its negation.

    A multi-layer point steers ``layer`` and ``added_layers`` together (each with its own vector, one strength);
    ``added_layers`` are in the order the greedy search added them.
    """

    positions: Positions
    layer: int
    strength: float
    val_accuracy: float
    negated_val_accuracy: float
    added_layers: tuple[int, ...] = ()

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer, *self.added_layers)

    @property
    def gain(self) -> float:
        """Half the gap between the two signs: the part of the effect that depends on the direction."""
        return (self.val_accuracy - self.negated_val_accuracy) / 2


@dataclass(frozen=True)
class SeedOutcome:
    """One seed's re-split: the chosen point, its validation numbers and every test arm per item."""

    seed: int
    positions: Positions
    layer: int
    strength: float
    added_norm: float  # norm of strength * vector at the layer (what was added to the residual stream)
    val_baseline: float
    val_accuracy: float  # at the chosen point: optimistic, it is a maximum over the grid
    val_negated: float
    test_ids: list[str]
    baseline: list[float]  # per test item, 1.0 = correct
    steered: list[float]
    negated: list[float]
    random: list[list[float]]  # per random direction, per item
    rank: int
    p_value: float
    added_layers: tuple[int, ...] = ()  # steered together with ``layer`` (multi-layer PAS)

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer, *self.added_layers)

    @property
    def random_mean(self) -> list[float]:
        """Per item: the fraction of random directions under which it was answered right."""
        return [sum(column) / len(column) for column in zip(*self.random, strict=True)]


@dataclass(frozen=True)
class MethodResult:
    """One method over all seeds: intervals from the paired two-level bootstrap, the verdict, the first sweep."""

    method: str
    seeds: list[SeedOutcome]
    delta: Estimate  # steered - unsteered
    directional_gain: Estimate  # steered - mean of the random directions
    negated_delta: Estimate  # -vector - unsteered
    random_delta: Estimate  # mean random direction - unsteered
    rank: int  # pooled over seeds: test accuracy averaged per random draw index
    p_value: float
    random_directions: int
    verdict: Verdict
    selection_score: float  # mean over seeds of what the rule maximised
    sweep: list[SweepCell]
    icl_steering: Estimate | None = None
    icl_steering_accuracy: float | None = None
    multi_layer: bool = False  # a layer set grown from the method's single-layer point (``sweep``: the sets tried)

    def summary(self) -> dict[str, Any]:
        test = {name: mean([mean(getattr(s, name)) for s in self.seeds]) for name in ("baseline", "steered",
                                                                                         "negated")}
        test["random"] = mean([mean(s.random_mean) for s in self.seeds])
        return {
            "method": self.method,
            "multi_layer": self.multi_layer,
            "verdict": self.verdict,
            "verdict_text": VERDICT_TEXT[self.verdict],
            "test_accuracy": test,
            "delta": asdict(self.delta),
            "directional_gain": asdict(self.directional_gain),
            "negated_delta": asdict(self.negated_delta),
            "random_delta": asdict(self.random_delta),
            "rank": self.rank,
            "random_directions": self.random_directions,
            "random_accuracies": [mean([mean(s.random[k]) for s in self.seeds])
                                  for k in range(self.random_directions)],
            "p_value": self.p_value,
            "selection_score": self.selection_score,
            "icl_steering": None if self.icl_steering is None else {
                "test_accuracy": self.icl_steering_accuracy, **asdict(self.icl_steering)},
            "per_seed": [
                {"seed": s.seed, "positions": s.positions, "layer": s.layer, "layers": list(s.layers),
                 "strength": s.strength,
                 "added_norm": s.added_norm, "val_baseline": s.val_baseline,
                 "val_accuracy_optimistic": s.val_accuracy, "val_negated": s.val_negated,
                 "test_baseline": mean(s.baseline), "test_steered": mean(s.steered),
                 "test_negated": mean(s.negated), "test_random_mean": mean(s.random_mean),
                 "rank": s.rank, "p_value": s.p_value}
                for s in self.seeds],
            "sweep": [{**asdict(c), "added_layers": list(c.added_layers), "gain": c.gain} for c in self.sweep],
            "per_item": [
                {"seed": s.seed, "ids": s.test_ids, "baseline": s.baseline, "steered": s.steered,
                 "negated": s.negated, "random_mean": s.random_mean} for s in self.seeds],
        }


@dataclass
class RunReport:
    """Everything ``report.json`` holds, typed."""

    steerlab_version: str
    model: dict[str, str]  # name, dtype, weights and tokenizer digests
    task: str
    config: dict[str, Any]
    scoring: str
    scoring_check: dict[str, Any]
    unit: str
    method: str  # the one reported on top: best mean selection score
    methods: dict[str, MethodResult]
    skipped: dict[str, str]
    controls: dict[str, Any]  # constant letter, shortest answer, ICL
    letters: dict[str, dict[str, int]]
    grid: dict[str, list[Any]]
    timings: dict[str, float] = field(default_factory=dict)
    retention: Retention | None = None  # what the chosen steering costs elsewhere (``--retain``)
    sft: SFTComparison | None = None  # PAS, LoRA and LoRA + PAS on the same test items (``--compare sft``)

    @property
    def chosen(self) -> MethodResult:
        return self.methods[self.method]

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen.summary()
        first = self.chosen.seeds[0]
        return {
            "steerlab_version": self.steerlab_version,
            "model": self.model["model"],
            "model_identity": self.model,
            "task": self.task,
            "config": self.config,
            "scoring": self.scoring,
            "scoring_check": self.scoring_check,
            "unit": self.unit,
            "method": self.method,
            "verdict": chosen["verdict"],
            "verdict_text": chosen["verdict_text"],
            "positions": first.positions,
            "layer": first.layer,
            "strength": first.strength,
            "delta": chosen["delta"],
            "directional_gain": chosen["directional_gain"],
            "ci_method": "paired bootstrap over seeds and test items (percentile, 95%)",
            "methods": {name: result.summary() for name, result in self.methods.items()},
            "skipped": self.skipped,
            "controls": self.controls,
            "letters": self.letters,
            "grid": self.grid,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            **({"retention": self.retention.summary()} if self.retention is not None else {}),
            **({"sft": self.sft.summary()} if self.sft is not None else {}),
        }
