"""How a vector was meant to be applied: its layers, strength, strength unit, positions and target, stored in its
file.

``steer(model, vector)``, ``steerlab generate --vector`` and ``export-gguf`` read it, so the intervention that was
validated is the one that is replayed.

``unit="relative"``: each stored direction has the mean residual-stream norm at its layer, so ``strength`` is a
fraction of that norm. ``unit="absolute"``: ``strength`` multiplies the stored direction as it is. In both cases
the addition is ``strength * direction``; the unit says how to read the number.

``target`` is where the addition goes in each block (see :func:`steerlab.models.target_module`): the block's output
(``residual``, the default and what files written before targets existed mean), or its attention or MLP output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from steerlab.core.positions import Positions, check_positions
from steerlab.errors import ConfigError
from steerlab.models import Target, check_target


@dataclass(frozen=True)
class Recipe:
    layers: tuple[int, ...]
    strength: float
    unit: str = "absolute"
    positions: Positions = "all"
    target: Target = "residual"

    def __post_init__(self) -> None:
        check_positions(self.positions)
        check_target(self.target)
        if self.unit not in ("relative", "absolute"):
            raise ConfigError(f"recipe unit must be 'relative' or 'absolute', got {self.unit!r}")
        if not self.layers:
            raise ConfigError("a recipe needs at least one layer")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        if not isinstance(data, dict):
            raise ConfigError(f"a recipe must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"layers", "strength", "unit", "positions", "target"}
        if unknown:
            raise ConfigError(f"recipe has unknown field(s) {sorted(unknown)}")
        try:
            layers = tuple(int(x) for x in data["layers"])
            strength = float(data["strength"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"recipe needs 'layers' (integers) and 'strength' (a number): {exc}") from None
        positions = check_positions(str(data.get("positions", "all")))
        return cls(layers, strength, str(data.get("unit", "absolute")), positions,
                   check_target(str(data.get("target", "residual"))))
