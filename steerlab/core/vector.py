"""Steering vectors and the steerlab file format.

A steerlab file is a safetensors file whose header ``__metadata__`` holds ``format``, ``format_version``,
``kind`` and a JSON ``metadata`` blob. Vectors are one kind; later kinds (learned steering models) reuse the
same container.

Layer ``i`` is the 0-based index of the decoder block whose output the vector is added to
(transformers ``hidden_states[i + 1]``). Strength multiplies the vector as stored; ``metadata["normalized"]``
says whether each layer has unit L2 norm.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import operator
import os
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from steerlab.core.recipe import Recipe
from steerlab.errors import ConfigError, VectorFileError

FORMAT = "steerlab"
FORMAT_VERSION = 1

VECTOR_KIND = "vector"

# safetensors dtype codes for the tensors we may write.
_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

# Canonical decimal only, so that every layer has exactly one tensor name.
_LAYER_NAME = re.compile(r"layer\.(0|[1-9][0-9]*)")


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path in the target's folder; it replaces ``path`` only if the block succeeds.

    On any failure the temporary file is removed and an existing ``path`` is left untouched.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # Exclusive create honours the umask, unlike mkstemp's 0600, so the final file gets normal permissions.
    with open(tmp, "xb"):
        pass
    try:
        yield tmp
        with open(tmp, "r+b") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safetensors_bytes(tensors: dict[str, torch.Tensor], header_metadata: dict[str, str]) -> bytes:
    # Serialised by hand: safetensors' own writer orders __metadata__ by a randomly seeded hash map,
    # so even two saves in one process give different bytes.
    header: dict[str, Any] = {"__metadata__": header_metadata}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ConfigError("'__metadata__' is reserved and cannot name a tensor")
        tensor = tensors[name].detach().to("cpu").contiguous()
        code = _DTYPE_CODES.get(tensor.dtype)
        if code is None:
            raise ConfigError(f"tensor {name!r} has dtype {tensor.dtype}, which steerlab files cannot store")
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        end = offset + len(data)
        header[name] = {"dtype": code, "shape": list(tensor.shape), "data_offsets": [offset, end]}
        chunks.append(data)
        offset = end
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    # Pad with spaces (as safetensors does) so tensor data starts 8-byte aligned for memory mapping.
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


def write_steering_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a steerlab file atomically; the same input always gives the same bytes.

    ``metadata`` must be JSON-serialisable and carry a non-empty string ``kind``.
    """
    kind = metadata.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ConfigError("steering file metadata needs a non-empty string 'kind'")
    try:
        blob = json.dumps(metadata, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"steering file metadata is not JSON-serialisable: {exc}") from None
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind, "metadata": blob}
    data = _safetensors_bytes(tensors, header)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _not_safetensors(path: Path, exc: Exception) -> VectorFileError:
    with open(path, "rb") as fh:
        head = fh.read(2)
    # torch.save writes a zip archive (PK) or, in the legacy format, a raw pickle (protocol opcode 0x80).
    hint = " (it looks like a PyTorch pickle, e.g. from torch.save)" if head in (b"PK", b"\x80\x02") else ""
    return VectorFileError(
        f"{path}: not a safetensors file{hint}: {exc}. "
        "steerlab reads only safetensors and never loads pickles"
    )


def read_steering_file(path: str | Path) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(kind, tensors, metadata)``; every problem is a VectorFileError naming the path."""
    p = Path(path)
    if not p.exists():
        raise VectorFileError(f"{p}: no such file")
    if p.is_dir():
        raise VectorFileError(f"{p}: is a directory, not a steerlab file")
    try:
        with safe_open(str(p), framework="pt") as reader:
            header = reader.metadata() or {}
            kind, metadata = _check_header(p, header)
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as exc:
        raise _not_safetensors(p, exc) from None
    except OSError as exc:
        raise VectorFileError(f"{p}: cannot read: {exc}") from None
    return kind, tensors, metadata


def read_steering_kind(path: str | Path, kind: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of a steerlab file that must hold a ``kind`` (``what`` names it in the error)."""
    found, tensors, metadata = read_steering_file(path)
    if found != kind:
        raise VectorFileError(f"{path}: holds a steerlab {found!r}, not {what}")
    return tensors, metadata


def _check_header(path: Path, header: dict[str, str]) -> tuple[str, dict[str, Any]]:
    if "format" not in header:
        raise VectorFileError(
            f"{path}: a safetensors file, but not a steerlab file (its header has no 'format' key)"
        )
    if header["format"] != FORMAT:
        raise VectorFileError(f"{path}: header format is {header['format']!r}, not {FORMAT!r}")
    raw_version = header.get("format_version", "")
    try:
        version = int(raw_version)
    except ValueError:
        raise VectorFileError(f"{path}: invalid format_version {raw_version!r}") from None
    if version > FORMAT_VERSION:
        raise VectorFileError(
            f"{path}: written in steerlab format version {version}, but this steerlab reads up to version "
            f"{FORMAT_VERSION}; upgrade steerlab to read it"
        )
    if version < 1:
        raise VectorFileError(f"{path}: invalid format_version {raw_version!r}")
    kind = header.get("kind", "")
    if not kind:
        raise VectorFileError(f"{path}: the header has no 'kind'")
    try:
        metadata = json.loads(header.get("metadata", ""))
    except json.JSONDecodeError as exc:
        raise VectorFileError(f"{path}: malformed JSON metadata: {exc}") from None
    if not isinstance(metadata, dict):
        raise VectorFileError(f"{path}: metadata must be a JSON object, got {type(metadata).__name__}")
    return kind, metadata


@dataclass(eq=False)  # element-wise tensor comparison has no single truth value
class SteeringVector:
    """Per-layer directions to add to decoder block outputs.

    ``metadata`` is JSON-serialisable (model, method, token, normalized, settings, ...). Its ``hidden_size``
    and ``layers`` entries are derived from the tensors and kept in sync on construction.
    """

    layers: dict[int, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"vector metadata must be a dict, got {type(self.metadata).__name__}")
        if not self.layers:
            raise ConfigError("a steering vector needs at least one layer")
        size: int | None = None
        for layer, tensor in self.layers.items():
            if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
                raise ConfigError(f"layer index {layer!r} is not an int >= 0")
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise ConfigError(
                    f"layer {layer}: expected a floating-point tensor, got {_describe_type(tensor)}"
                )
            if tensor.dim() != 1:
                raise ConfigError(f"layer {layer}: expected a 1-D tensor, got shape {tuple(tensor.shape)}")
            if size is None:
                size = tensor.numel()
            elif tensor.numel() != size:
                raise ConfigError(
                    f"layer {layer} has size {tensor.numel()}, but other layers have size {size}"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise ConfigError(f"layer {layer} contains NaN or infinite values")
        self.layers = dict(sorted(self.layers.items()))
        # Copied so that later edits to the caller's dict cannot change this vector.
        self.metadata = {**self.metadata, "hidden_size": size, "layers": list(self.layers)}

    @property
    def hidden_size(self) -> int:
        return next(iter(self.layers.values())).numel()

    @property
    def recipe(self) -> Recipe | None:
        """How the vector was selected to be applied (layers, strength, unit, positions), if its file says."""
        data = self.metadata.get("recipe")
        return None if data is None else Recipe.from_dict(data)

    def with_recipe(self, recipe: Recipe) -> SteeringVector:
        """This vector restricted to the recipe's layers, with the recipe recorded in its metadata."""
        missing = [layer for layer in recipe.layers if layer not in self.layers]
        if missing:
            raise ConfigError(f"the recipe names layer(s) {missing} that the vector does not have")
        layers = {layer: self.layers[layer] for layer in recipe.layers}
        return SteeringVector(layers, {**copy.deepcopy(self.metadata), "recipe": recipe.to_dict()})

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> SteeringVector:
        moved = {i: t.to(device=device, dtype=dtype) for i, t in self.layers.items()}
        return SteeringVector(moved, copy.deepcopy(self.metadata))

    # Arithmetic: every result is a new vector whose metadata records the operation.

    def _combine(self, other: SteeringVector, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 name: str) -> SteeringVector:
        if self.hidden_size != other.hidden_size:
            raise ConfigError(
                f"cannot {name} vectors of different hidden sizes "
                f"({self.hidden_size} and {other.hidden_size})"
            )
        layers = {}
        for i in sorted(self.layers.keys() | other.layers.keys()):
            # A layer missing from one side counts as a zero vector there.
            zero = torch.zeros_like(self.layers[i] if i in self.layers else other.layers[i])
            layers[i] = op(self.layers.get(i, zero), other.layers.get(i, zero))
        metadata: dict[str, Any] = {
            "method": "combination",
            "combined_from": [copy.deepcopy(self.metadata), copy.deepcopy(other.metadata)],
            "operations": [{"op": name}],
            "normalized": False,
        }
        for key in ("model", "token"):
            values = [v.metadata[key] for v in (self, other) if key in v.metadata]
            if values and all(value == values[0] for value in values):  # kept only when the operands agree
                metadata[key] = values[0]
        return SteeringVector(layers, metadata)

    def _derive(self, layers: dict[int, torch.Tensor], step: dict[str, Any],
                normalized: bool) -> SteeringVector:
        metadata = copy.deepcopy(self.metadata)
        metadata.pop("recipe", None)  # a derived vector was never validated as the original was
        metadata["operations"] = [*metadata.get("operations", []), step]
        metadata["normalized"] = normalized
        return SteeringVector(layers, metadata)

    def __add__(self, other: object) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, operator.add, "add")

    def __sub__(self, other: object) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, operator.sub, "subtract")

    def __mul__(self, factor: object) -> SteeringVector:
        if not isinstance(factor, numbers.Real):
            return NotImplemented
        k = _finite_scalar(factor)
        return self._derive({i: t * k for i, t in self.layers.items()}, {"op": "multiply", "by": k},
                            bool(self.metadata.get("normalized")) and abs(k) == 1.0)

    __rmul__ = __mul__

    def __truediv__(self, divisor: object) -> SteeringVector:
        if not isinstance(divisor, numbers.Real):
            return NotImplemented
        k = _finite_scalar(divisor)
        if k == 0.0:
            raise ConfigError("cannot divide a steering vector by zero")
        return self._derive({i: t / k for i, t in self.layers.items()}, {"op": "divide", "by": k},
                            bool(self.metadata.get("normalized")) and abs(k) == 1.0)

    def __neg__(self) -> SteeringVector:
        return self._derive({i: -t for i, t in self.layers.items()}, {"op": "negate"},
                            bool(self.metadata.get("normalized")))

    def normalized(self) -> SteeringVector:
        """Scale every layer to unit L2 norm."""
        layers = {}
        for i, t in self.layers.items():
            norm = torch.linalg.vector_norm(t)
            if norm == 0:
                raise ConfigError(f"layer {i} is all zeros and cannot be normalised")
            layers[i] = t / norm
        return self._derive(layers, {"op": "normalize"}, True)

    def restrict(self, layers: Iterable[int]) -> SteeringVector:
        """Keep only the given layers."""
        wanted = sorted(set(layers))
        missing = [i for i in wanted if i not in self.layers]
        if missing:
            raise ConfigError(f"layers {missing} are not in the vector (it has layers {list(self.layers)})")
        if not wanted:
            raise ConfigError("restrict needs at least one layer")
        return self._derive({i: self.layers[i].clone() for i in wanted}, {"op": "restrict", "layers": wanted},
                            bool(self.metadata.get("normalized")))

    # Files.

    def save(self, path: str | Path) -> None:
        """Write a float32 steerlab ``vector`` file (tensors ``layer.<i>``)."""
        tensors = {f"layer.{i}": t.detach().to("cpu", torch.float32) for i, t in self.layers.items()}
        metadata = {**self.metadata, "kind": VECTOR_KIND, "hidden_size": self.hidden_size,
                    "layers": list(self.layers)}
        write_steering_file(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        tensors, metadata = read_steering_kind(path, VECTOR_KIND, "a steering vector")
        metadata.pop("kind", None)
        hidden = metadata.get("hidden_size")
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise VectorFileError(f"{path}: metadata has no valid 'hidden_size' (got {hidden!r})")
        layers: dict[int, torch.Tensor] = {}
        for name, tensor in tensors.items():
            match = _LAYER_NAME.fullmatch(name)
            if match is None:
                raise VectorFileError(f"{path}: tensor {name!r} is not named layer.<index>")
            if tensor.dtype != torch.float32:
                raise VectorFileError(
                    f"{path}: tensor {name!r} has dtype {_dtype_name(tensor.dtype)}; "
                    "vector files store float32"
                )
            if tensor.dim() != 1 or tensor.numel() != hidden:
                raise VectorFileError(
                    f"{path}: tensor {name!r} has shape {list(tensor.shape)}, "
                    f"expected [{hidden}] (the hidden size)"
                )
            layers[int(match[1])] = tensor
        try:
            vector = cls(layers, metadata)
        except ConfigError as exc:
            raise VectorFileError(f"{path}: {exc}") from None
        return checked_recipe(vector, path)

    def check_compatible(self, hidden_size: int, num_layers: int, model_name: str | None = None) -> None:
        """Raise VectorFileError unless the vector fits a model of this width and depth.

        The model name is only used in messages: vectors transfer across fine-tunes of the same base.
        """
        target = f"model {model_name!r}" if model_name else "the model"
        if self.hidden_size != hidden_size:
            source = self.metadata.get("model")
            origin = f"made for {source!r}" if source else "of unknown origin"
            raise VectorFileError(
                f"hidden size mismatch: the vector ({origin}) has hidden size {self.hidden_size}, "
                f"but {target} has {hidden_size}"
            )
        outside = [i for i in self.layers if i >= num_layers]
        if outside:
            raise VectorFileError(
                f"layer {', '.join(map(str, outside))} out of range: {target} has {num_layers} layers, "
                f"valid layers are 0..{num_layers - 1}"
            )

    def summary(self) -> dict[str, Any]:
        """What ``steerlab info`` shows."""
        return {
            "kind": VECTOR_KIND,
            "format_version": FORMAT_VERSION,
            "model": self.metadata.get("model"),
            "method": self.metadata.get("method"),
            "token": self.metadata.get("token"),
            "normalized": bool(self.metadata.get("normalized", False)),
            "hidden_size": self.hidden_size,
            "layers": {i: float(torch.linalg.vector_norm(t.float())) for i, t in self.layers.items()},
            "settings": self.metadata.get("settings", {}),
        }


def _finite_scalar(value: numbers.Real) -> float:
    k = float(value)
    if not math.isfinite(k):
        raise ConfigError(f"cannot scale a steering vector by {k}")
    return k


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _describe_type(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return _dtype_name(value.dtype)
    return type(value).__name__


def checked_recipe(vector: SteeringVector, path: str | Path) -> SteeringVector:
    """``vector``, read from ``path``, once its recorded recipe parses and names only layers it has: a file's bad
    recipe is reported when the file is read, not when someone first steers with it."""
    try:
        recipe = vector.recipe
    except ConfigError as exc:
        raise VectorFileError(f"{path}: {exc}") from None
    if recipe is not None and not set(recipe.layers) <= set(vector.layers):
        raise VectorFileError(f"{path}: the recipe names layers {list(recipe.layers)} but the file has "
                              f"{list(vector.layers)}")
    return vector
