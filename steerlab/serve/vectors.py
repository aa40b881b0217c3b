"""The vectors a server offers: every steerlab file and llama.cpp control vector in one folder, by name.

Steering vectors and learned interventions go in a request's ``steering`` list; conditional programs (kind
``conditional``) in its ``program`` field.

Clients name a vector, never a path: the name is the file's stem, and only files found in the folder at start-up
can be used. Every file is checked against the served model (hidden size, layers) before the server listens.

Example::

    from steerlab import load_model
    from steerlab.serve.vectors import VectorLibrary
    model, tok = load_model()
    library = VectorLibrary.load("vectors/", model)
    print([entry.info() for entry in library.entries()])
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from steerlab.conditional.program import ConditionalProgram
from steerlab.core.hooks import Intervention, SteeringSource, as_intervention
from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError, VectorFileError
from steerlab.files import load_steering
from steerlab.interop.llamacpp import import_gguf
from steerlab.models import hidden_size, num_layers
from steerlab.models.identity import weights_digest

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SUFFIXES = {".safetensors": "steerlab", ".gguf": "gguf"}


@dataclass(frozen=True, eq=False)
class ServedVector:
    name: str
    source: SteeringSource | ConditionalProgram
    file: str  # the file's name inside the folder (never its full path: clients see it)
    format: str  # "steerlab" or "gguf"

    def info(self) -> dict[str, Any]:
        """What ``/v1/steering/vectors`` lists."""
        if isinstance(self.source, ConditionalProgram):
            program = self.source
            layers = {layer for c in program.conditions for layer in c.layers}
            layers |= {layer for b in program.behaviours for layer in b.vector.layers}
            return {"name": self.name, "kind": "conditional", "format": self.format,
                    "model": program.metadata.get("model"), "layers": sorted(layers),
                    "conditions": [c.name for c in program.conditions],
                    "behaviours": {b.name: b.strength for b in program.behaviours},
                    "rules": [rule.text for rule in program.rules], "positions": program.positions}
        metadata = self.source.metadata if isinstance(self.source, SteeringVector) else {}
        recipe = self.source.recipe if isinstance(self.source, SteeringVector) else None
        return {
            "name": self.name,
            "kind": "vector" if isinstance(self.source, SteeringVector) else type(self.source).__name__,
            "format": self.format,
            "model": metadata.get("model") or metadata.get("model_hint"),
            "layers": as_intervention(self.source).layer_indices,
            "recipe": None if recipe is None else recipe.to_dict(),
            "normalized": bool(metadata.get("normalized", False)),
        }


class VectorLibrary:
    def __init__(self, entries: dict[str, ServedVector]) -> None:
        self._entries = dict(sorted(entries.items()))

    @classmethod
    def load(cls, folder: str | Path, model: nn.Module) -> VectorLibrary:
        """Every ``*.safetensors`` and ``*.gguf`` in ``folder`` (not recursive), each checked against ``model``."""
        root = Path(folder)
        if not root.is_dir():
            raise VectorFileError(f"{root}: not a folder of vectors")
        width, depth = hidden_size(model), num_layers(model)
        entries: dict[str, ServedVector] = {}
        digest: str | None = None
        for path in sorted(root.iterdir()):
            form = _SUFFIXES.get(path.suffix)
            if form is None or not path.is_file():
                continue
            if NAME.fullmatch(path.stem) is None:
                raise VectorFileError(f"{path}: a served vector's file name must match {NAME.pattern} "
                                      "(letters, digits, '.', '_', '-')")
            if path.stem in entries:
                raise VectorFileError(f"{path}: the name {path.stem!r} is taken by {entries[path.stem].file}")
            source = import_gguf(path) if form == "gguf" else load_steering(path)
            if isinstance(source, ConditionalProgram):
                source.check_compatible(width, depth)
                digest = digest or weights_digest(model)
                source.check_weights(digest)  # thresholds were calibrated on one model's activations
                entries[path.stem] = ServedVector(path.stem, source, path.name, form)
                continue
            if not isinstance(source, SteeringVector | Intervention):
                raise VectorFileError(f"{path}: a {type(source).__name__} cannot be served")
            intervention = as_intervention(source)
            if intervention.hidden_size != width:
                raise VectorFileError(f"{path}: hidden size {intervention.hidden_size}, but the model has {width}")
            outside = [layer for layer in intervention.layer_indices if layer >= depth]
            if outside:
                raise VectorFileError(f"{path}: layer(s) {outside} out of range: the model has layers "
                                      f"0..{depth - 1}")
            entries[path.stem] = ServedVector(path.stem, source, path.name, form)
        return cls(entries)

    def entries(self) -> list[ServedVector]:
        return list(self._entries.values())

    def get(self, name: str) -> ServedVector:
        if NAME.fullmatch(name) is None:
            raise ConfigError(f"{name!r} is not a vector name (names are file stems: letters, digits, "
                              "'.', '_', '-'; never paths)")
        if name not in self._entries:
            known = ", ".join(self._entries) or "none"
            raise ConfigError(f"unknown vector {name!r}; this server has: {known}")
        return self._entries[name]
