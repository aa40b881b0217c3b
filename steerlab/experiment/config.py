"""What a ``steerlab run`` is asked to do: a small typed configuration with the defaults a user meets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from steerlab.core.positions import Positions, check_positions
from steerlab.errors import ConfigError
from steerlab.methods.pas import PAS_METHODS
from steerlab.models import Target, check_target

Select = Literal["directional", "accuracy"]
Unit = Literal["relative", "absolute"]
SELECT_RULES: tuple[Select, ...] = ("directional", "accuracy")
UNITS: tuple[Unit, ...] = ("relative", "absolute")

# Relative strengths: multiples of the mean residual norm at the layer, so one grid fits every layer and model.
DEFAULT_RELATIVE_STRENGTHS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
DEFAULT_ABSOLUTE_STRENGTHS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def default_sweep_layers(depth: int) -> list[int]:
    """Eight layers spread over the middle of the network (25% to 80% of its depth), where steering works best."""
    high = min(depth - 1, max(1, round(0.8 * depth)))  # a 1- or 2-block model still gets its own blocks
    low = min(high, max(1, round(0.25 * depth)))
    count = min(8, high - low + 1)
    return sorted({round(low + k * (high - low) / max(1, count - 1)) for k in range(count)})


@dataclass(frozen=True)
class RunConfig:
    """``steerlab run``'s settings. ``None`` means the default that depends on the model or the scoring.

    ``select="directional"`` picks the grid point whose effect a random push cannot explain: the gain of ``+s`` over
    ``-s`` (half the gap), among points where ``+s`` does not lower validation accuracy. A push's disruption does
    not depend on its sign to first order, its direction does, so the gap removes what any push of that size does.
    ``select="accuracy"`` is the old rule: the highest validation accuracy.
    """

    task: str = "caa/survival-instinct"
    methods: tuple[str, ...] = ("ipas-wo",)  # the paper's strongest; PAS_METHODS compares all four
    layers: tuple[int, ...] | None = None
    strengths: tuple[float, ...] | None = None
    unit: Unit = "relative"
    positions: tuple[Positions, ...] | None = None  # searched; None: last_prompt, answer and turn
    select: Select = "directional"
    random_directions: int = 16  # at test, at the chosen point, per seed
    max_layers: int = 1  # above 1: also grow each method's point greedily into a set of up to this many layers
    # Sized so that plain `steerlab run` takes under 5 minutes on 2 CPU cores; --n-test 200 tightens the interval.
    n_train: int = 64
    n_val: int = 32
    n_test: int | None = 64  # None: every item not in the training or validation split
    seeds: int = 1
    seed: int = 0
    scoring: Literal["auto", "letters", "likelihood"] = "auto"
    length_normalize: bool = False
    chat: bool = True
    icl_k: int = 4
    batch_size: int = 8
    # What the chosen steering costs, on a built-in task it was not selected on (experiment.retention); None: skip.
    retain: str | None = None
    retain_n: int = 100
    compare_sft: bool = False  # also fine-tune a LoRA adapter on the same splits, and PAS on top (finetune.lora)
    # Ablations. Where each block is read and steered: its output, or its attention or MLP output.
    steer_target: Target = "residual"
    # Build vectors from the first this many training items only; the splits stay those of n_train, so a
    # sample-size curve compares vectors on the same validation and test items.
    vector_items: int | None = None

    def __post_init__(self) -> None:
        for method in self.methods:
            if method not in PAS_METHODS:
                raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(PAS_METHODS)} or all")
        if not self.methods:
            raise ConfigError("no method given")
        if self.unit not in UNITS:
            raise ConfigError(f"unknown strength unit '{self.unit}'; choose one of {', '.join(UNITS)}")
        if self.select not in SELECT_RULES:
            raise ConfigError(f"unknown selection rule '{self.select}'; choose one of {', '.join(SELECT_RULES)}")
        if self.scoring not in ("auto", "letters", "likelihood"):
            raise ConfigError(f"unknown scoring '{self.scoring}'; choose auto, letters or likelihood")
        for name in self.positions or ():
            check_positions(name)
        if self.strengths is not None:
            if not self.strengths:
                raise ConfigError("no strengths given")
            if self.select == "directional" and any(s <= 0 for s in self.strengths):
                raise ConfigError(f"strengths {list(self.strengths)}: the directional rule takes positive strengths "
                                  "and measures each one's negation itself (use --select accuracy for signed grids)")
        if self.random_directions < 1:
            raise ConfigError(f"random_directions must be at least 1, got {self.random_directions}")
        check_target(self.steer_target)
        if self.vector_items is not None and not 1 <= self.vector_items <= self.n_train:
            raise ConfigError(f"vector_items must be between 1 and n_train ({self.n_train}), got {self.vector_items}")
        if self.retain is not None and self.retain == self.task:
            raise ConfigError(f"--retain {self.retain}: retention is measured on a task the steering was not "
                              "selected on; choose another task (default mmlu)")
        if self.icl_k < 0:
            raise ConfigError(f"icl_k (in-context examples) must be 0 or more, got {self.icl_k}")
        for count in ("n_train", "n_val", "n_test", "seeds", "batch_size", "max_layers", "retain_n"):
            if getattr(self, count) is not None and getattr(self, count) < 1:
                raise ConfigError(f"{count} must be at least 1, got {getattr(self, count)}")

    @property
    def pas_settings(self) -> dict[str, Any]:
        """The settings the unsteered passes and every PAS result depend on: adding --retain or --compare to a
        finished run reuses its work, and so does an ablation (see :attr:`vector_settings`)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("retain", "retain_n", "compare_sft", *self.vector_settings)}

    @property
    def vector_settings(self) -> dict[str, Any]:
        """The ablation settings, which change the vectors and what follows them but no unsteered pass."""
        return {"steer_target": self.steer_target, "vector_items": self.vector_items}

    @property
    def strength_grid(self) -> tuple[float, ...]:
        if self.strengths is not None:
            return self.strengths
        return DEFAULT_RELATIVE_STRENGTHS if self.unit == "relative" else DEFAULT_ABSOLUTE_STRENGTHS

    def positions_grid(self, scoring: str) -> tuple[Positions, ...]:
        """The positions searched; under letter scoring ``answer`` is ``last_prompt`` and is not searched twice."""
        wanted: tuple[Positions, ...] = self.positions or ("last_prompt", "answer", "turn")
        if scoring == "letters":
            same: dict[str, Positions] = {"answer": "last_prompt", "prompt": "all"}
            wanted = tuple(same.get(p, p) for p in wanted)
        return tuple(dict.fromkeys(wanted))
