"""A conditional steering program: conditions, behaviours and the rules that join them, in one steerlab file.

The file is a steerlab safetensors file of kind ``conditional`` (see :mod:`steerlab.core.vector`): tensors
``condition.<name>.layer.<i>`` (condition directions) and ``behaviour.<name>.layer.<i>`` (behaviour vectors);
the metadata lists each condition's score, layers, threshold, comparator and held-out report, each behaviour's
strength, the rules as written, the steered positions, and the model's weights digest (thresholds are calibrated
on one model's activations, so they are checked against the weights, not only the width).

Example::

    from steerlab.conditional import ConditionalProgram
    program = ConditionalProgram.load("refuse-harmful.safetensors")
    print([c.name for c in program.conditions], [r.text for r in program.rules])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steerlab.conditional.rules import NAME, Rule, check_rule, parse_rule
from steerlab.conditional.scores import Score, check_score, score
from steerlab.conditional.search import Comparator, Metrics, Rate, check_comparator, fires
from steerlab.core.positions import check_positions
from steerlab.core.vector import SteeringVector, read_steering_kind, write_steering_file
from steerlab.errors import ConfigError, VectorFileError

PROGRAM_KIND = "conditional"


@dataclass(frozen=True)
class ConditionReport:
    """How a condition was chosen (validation) and how it did on prompts it never saw (test)."""

    method: str
    candidate_layers: tuple[int, ...]
    validation_f1: float
    margin: float
    test: Metrics
    sizes: dict[str, int]  # prompts per split and side: train_pos, train_neg, val_pos, ...

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConditionReport:
        test = data["test"]
        return cls(str(data["method"]), tuple(int(x) for x in data["candidate_layers"]),
                   float(data["validation_f1"]), float(data["margin"]),
                   Metrics(Rate(**test["precision"]), Rate(**test["recall"]), Rate(**test["f1"]),
                           int(test["positives"]), int(test["negatives"])),
                   {str(k): int(v) for k, v in data["sizes"].items()})


@dataclass(eq=False)
class Condition:
    """A learned test on a prompt: it holds when ``score`` at any of its layers passes ``threshold``."""

    name: str
    directions: dict[int, torch.Tensor]
    score: Score
    threshold: float
    comparator: Comparator
    platt: dict[int, tuple[float, float]] = field(default_factory=dict)  # per layer, probe scores only
    report: ConditionReport | None = None

    def __post_init__(self) -> None:
        if NAME.fullmatch(self.name) is None:
            raise ConfigError(f"condition name {self.name!r} must be a letter followed by letters, digits, _ or -")
        if not self.directions:
            raise ConfigError(f"condition {self.name!r} has no layer")
        self.score = check_score(self.score)
        self.comparator = check_comparator(self.comparator)
        self.directions = dict(sorted(self.directions.items()))
        shapes = {tuple(c.shape) for c in self.directions.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ConfigError(f"condition {self.name!r}: directions must be 1-D and of one size, got {sorted(shapes)}")

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.directions.values())).numel()

    def scores(self, reads: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Scores of the prompts read at this condition's layers (``reads[layer]`` is (n, hidden))."""
        return {layer: score(self.score, reads[layer], c, self.platt.get(layer, (1.0, 0.0)))
                for layer, c in self.directions.items()}

    def holds(self, reads: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """(n,) bool: where the condition holds."""
        return fires(self.layers, self.scores(reads), self.threshold, self.comparator)


@dataclass(eq=False)
class Behaviour:
    """A steering vector added, at ``strength``, to the rows where a rule naming it holds."""

    name: str
    vector: SteeringVector
    strength: float = 1.0

    def __post_init__(self) -> None:
        if NAME.fullmatch(self.name) is None:
            raise ConfigError(f"behaviour name {self.name!r} must be a letter followed by letters, digits, _ or -")


@dataclass(eq=False)
class ConditionalProgram:
    """Conditions, behaviours and rules; steer with :func:`steerlab.conditional.gating.steer_program`."""

    conditions: tuple[Condition, ...]
    behaviours: tuple[Behaviour, ...] = ()
    rules: tuple[Rule, ...] = ()
    positions: str = "all"
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # the file it was loaded from, for messages; not saved

    def __post_init__(self) -> None:
        if not self.conditions:
            raise ConfigError("a conditional program needs at least one condition")
        self.conditions, self.behaviours = tuple(self.conditions), tuple(self.behaviours)
        self.rules = tuple(self.rules)
        self.positions = check_positions(self.positions)
        names = [c.name for c in self.conditions] + [b.name for b in self.behaviours]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"names must be unique across conditions and behaviours: {', '.join(repeated)}")
        widths = {c.hidden_size for c in self.conditions} | {b.vector.hidden_size for b in self.behaviours}
        if len(widths) > 1:
            raise ConfigError(f"conditions and behaviours have different hidden sizes: {sorted(widths)}")
        for rule in self.rules:
            check_rule(rule, {c.name for c in self.conditions}, {b.name for b in self.behaviours})

    @property
    def hidden_size(self) -> int:
        return self.conditions[0].hidden_size

    def condition(self, name: str) -> Condition:
        for condition in self.conditions:
            if condition.name == name:
                return condition
        raise ConfigError(f"no condition named {name!r} (the program has {[c.name for c in self.conditions]})")

    def gates(self, held: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per behaviour, the rows it is applied to: any rule naming it holds there."""
        rows = next(iter(held.values())).shape[0]
        out = {b.name: torch.zeros(rows, dtype=torch.bool) for b in self.behaviours}
        for rule in self.rules:
            fired = rule.condition.evaluate(held).cpu()
            for name in rule.behaviours:
                out[name] = out[name] | fired
        return out

    @property
    def _where(self) -> str:
        return self.source or "the conditional program"

    def check_compatible(self, hidden_size: int, num_layers: int, model_name: str | None = None) -> None:
        """A VectorFileError naming the file unless the program fits a model of this width and depth."""
        target = f"model {model_name!r}" if model_name else "this model"
        if self.hidden_size != hidden_size:
            raise VectorFileError(f"{self._where}: made for a model of hidden size {self.hidden_size} "
                                  f"({self.metadata.get('model', 'unknown')}), but {target} has {hidden_size}")
        layers = {layer for c in self.conditions for layer in c.layers}
        layers |= {layer for b in self.behaviours for layer in b.vector.layers}
        outside = sorted(layer for layer in layers if layer >= num_layers)
        if outside:
            raise VectorFileError(f"{self._where}: uses layer(s) {outside}, but {target} has layers "
                                  f"0..{num_layers - 1}")

    def check_weights(self, weights: str) -> None:
        """A VectorFileError naming the file if its conditions were calibrated on other weights."""
        made_for = self.metadata.get("weights")
        if made_for is not None and made_for != weights:
            raise VectorFileError(f"{self._where}: its conditions were calibrated on another model "
                                  f"({self.metadata.get('model', 'unknown')}, weights {made_for[:12]}...) than "
                                  f"this one (weights {weights[:12]}...): train the conditions on this model")

    def save(self, path: str | Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for condition in self.conditions:
            for layer, c in condition.directions.items():
                tensors[f"condition.{condition.name}.layer.{layer}"] = c.detach().to("cpu", torch.float32)
        for behaviour in self.behaviours:
            for layer, v in behaviour.vector.layers.items():
                tensors[f"behaviour.{behaviour.name}.layer.{layer}"] = v.detach().to("cpu", torch.float32)
        metadata = {
            **self.metadata,
            "kind": PROGRAM_KIND,
            "hidden_size": self.hidden_size,
            "positions": self.positions,
            "conditions": [{"name": c.name, "layers": c.layers, "score": c.score, "threshold": c.threshold,
                            "comparator": c.comparator,
                            "platt": {str(layer): list(ab) for layer, ab in c.platt.items()},
                            "report": None if c.report is None else c.report.to_dict()} for c in self.conditions],
            "behaviours": [{"name": b.name, "strength": b.strength, "metadata": b.vector.metadata}
                           for b in self.behaviours],
            "rules": [rule.text for rule in self.rules],
        }
        write_steering_file(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path) -> ConditionalProgram:
        tensors, metadata = read_steering_kind(path, PROGRAM_KIND, "a conditional program")
        try:
            conditions = [Condition(str(c["name"]), _layers(tensors, f"condition.{c['name']}", c["layers"]),
                                    c["score"], float(c["threshold"]), c["comparator"],
                                    {int(k): (float(a), float(b)) for k, (a, b) in c["platt"].items()},
                                    None if c.get("report") is None else ConditionReport.from_dict(c["report"]))
                          for c in metadata["conditions"]]
            behaviours = [Behaviour(str(b["name"]), SteeringVector(
                _layers(tensors, f"behaviour.{b['name']}", b["metadata"]["layers"]), b["metadata"]),
                float(b["strength"])) for b in metadata["behaviours"]]
            known = {f"condition.{c.name}.layer.{i}" for c in conditions for i in c.layers}
            known |= {f"behaviour.{b.name}.layer.{i}" for b in behaviours for i in b.vector.layers}
            extra = sorted(set(tensors) - known)
            if extra:
                raise ConfigError(f"tensor(s) {extra} belong to no condition or behaviour")
            rest = {k: v for k, v in metadata.items()
                    if k not in ("kind", "hidden_size", "positions", "conditions", "behaviours", "rules")}
            return cls(tuple(conditions), tuple(behaviours), tuple(parse_rule(str(r)) for r in metadata["rules"]),
                       str(metadata["positions"]), rest, str(path))
        except ConfigError as exc:
            raise VectorFileError(f"{path}: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise VectorFileError(f"{path}: malformed conditional program metadata ({type(exc).__name__}: "
                                  f"{exc})") from None


def _layers(tensors: Mapping[str, torch.Tensor], prefix: str, layers: Sequence[Any]) -> dict[int, torch.Tensor]:
    out = {}
    for layer in layers:
        name = f"{prefix}.layer.{int(layer)}"
        if name not in tensors:
            raise ConfigError(f"tensor {name!r} is missing")
        tensor = tensors[name]
        if tensor.dtype != torch.float32 or tensor.dim() != 1:
            raise ConfigError(f"tensor {name!r} must be 1-D float32, got {list(tensor.shape)} {tensor.dtype}")
        out[int(layer)] = tensor
    return out
