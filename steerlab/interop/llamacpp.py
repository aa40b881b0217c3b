"""Exchange steering vectors with llama.cpp as control-vector GGUF files.

The format, as read in llama.cpp's own source (ggml-org/llama.cpp):

- common/common.cpp (commit 00758e06), ``common_control_vector_load_one``: every tensor must be named
  ``direction.<N>`` with N > 0 (``direction.0`` is rejected as an "invalid (zero) direction tensor layer
  index"), be F32 and 1-D, and all tensors must share one length (n_embd). ``direction.N`` goes to offset
  ``n_embd * (N - 1)`` of a flat buffer; repeated N are summed. No metadata key is read.
- src/llama-adapter.cpp (commit 0650ea8c), ``llama_adapter_cvec::init`` / ``apply``: ``tensors[0]`` is
  always null and, for ``il`` in 1..n_layer-1, ``tensors[il]`` is filled from offset ``n_embd * (il - 1)``;
  so ``tensors[N]`` holds ``direction.N``. ``tensor_for(il)`` returns it when il lies in the requested layer
  range (common's default range is 1..n_layer).
- src/llama-graph.cpp, ``llm_graph_context::build_cvec`` -> ``cvec->apply_to(ctx0, cur, il)``, and each model
  graph, e.g. src/models/llama.cpp (commit 069be0ae): called at the end of decoder block ``il`` (0-based),
  after the FFN residual add, on the tensor named ``l_out``. So ``direction.N`` is added to the output of
  block N: exactly our layer N. Our layer 0 has no llama.cpp equivalent.
- tools/cvector-generator/cvector-generator.cpp, ``export_gguf``: ``general.architecture = "controlvector"``,
  ``controlvector.model_hint`` (string, the model's architecture name) and ``controlvector.layer_count``
  (int32, the number of direction tensors written). Note that this generator (tools/cvector-generator/
  mean.hpp, pca.hpp) stores what it measured at the output of block il as ``direction.{il+1}``; importing
  keeps llama.cpp's application meaning (direction.N acts at block N), which is what reproduces its effect.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from steerlab.core.vector import SteeringVector, atomic_output, checked_recipe
from steerlab.errors import ConfigError, VectorFileError

ARCHITECTURE = "controlvector"
KEY_ARCHITECTURE = "general.architecture"
KEY_MODEL_HINT = f"{ARCHITECTURE}.model_hint"
KEY_LAYER_COUNT = f"{ARCHITECTURE}.layer_count"
# Our own metadata, ignored by llama.cpp, so that a round trip keeps method, normalisation and settings.
KEY_STEERLAB_METADATA = "steerlab.metadata"

_DIRECTION_NAME = re.compile(r"direction\.(0|[1-9][0-9]*)")

# Files made elsewhere count as normalised when every layer has unit norm within this tolerance.
_UNIT_NORM_TOLERANCE = 1e-4


def export_gguf(vector: SteeringVector, path: str | Path, model_hint: str | None = None) -> None:
    """Write ``vector`` as a llama.cpp control vector (atomic).

    ``model_hint`` defaults to the vector's ``model_hint`` or ``model`` metadata; it is informative only.
    """
    if 0 in vector.layers:
        raise ConfigError(
            "llama.cpp cannot apply a control vector at layer 0 (it rejects tensor direction.0 and never "
            "adds a direction after decoder block 0); restrict the vector to layers >= 1 before exporting"
        )
    target = vector.recipe.target if vector.recipe is not None else "residual"
    if target != "residual":
        raise ConfigError(f"the vector steers the {target} output of its blocks, but a llama.cpp control vector is "
                          "added to block outputs only; export a vector built with --steer-target residual")
    if model_hint is None:
        model_hint = vector.metadata.get("model_hint", vector.metadata.get("model"))
    try:
        own_metadata = json.dumps(vector.metadata, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"vector metadata is not JSON-serialisable: {exc}") from None
    with atomic_output(path) as tmp:
        writer = GGUFWriter(tmp, ARCHITECTURE)
        try:
            if isinstance(model_hint, str):
                writer.add_string(KEY_MODEL_HINT, model_hint)
            writer.add_int32(KEY_LAYER_COUNT, len(vector.layers))
            writer.add_string(KEY_STEERLAB_METADATA, own_metadata)
            for layer, tensor in vector.layers.items():
                data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
                writer.add_tensor(f"direction.{layer}", data)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()


def import_gguf(path: str | Path) -> SteeringVector:
    """Read a llama.cpp control vector; ``direction.N`` becomes layer N."""
    p = Path(path)
    if not p.is_file():
        raise VectorFileError(f"{p}: no such file")
    try:
        reader = GGUFReader(p)
    # gguf's reader signals malformed input with assorted exception types.
    except Exception as exc:
        raise VectorFileError(f"{p}: not a readable GGUF file: {exc}") from None
    arch = _string_field(reader, KEY_ARCHITECTURE)
    if arch != ARCHITECTURE:
        raise VectorFileError(
            f"{p}: GGUF architecture is {arch!r}, not {ARCHITECTURE!r}: not a llama.cpp control vector"
        )
    layers: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        match = _DIRECTION_NAME.fullmatch(tensor.name)
        if match is None:
            raise VectorFileError(f"{p}: tensor {tensor.name!r} is not named direction.<layer>")
        layer = int(match[1])
        if layer == 0:
            raise VectorFileError(f"{p}: tensor direction.0 is invalid (llama.cpp rejects layer 0 too)")
        if tensor.tensor_type != GGMLQuantizationType.F32:
            raise VectorFileError(
                f"{p}: tensor {tensor.name!r} has type {tensor.tensor_type.name}; control vectors are F32"
            )
        # ggml counts trailing dimensions of size 1 as absent, so [n, 1] is still 1-D for llama.cpp.
        shape = [int(n) for n in tensor.shape]
        if any(n != 1 for n in shape[1:]):
            raise VectorFileError(f"{p}: tensor {tensor.name!r} has shape {shape}; control vectors are 1-D")
        # Copied out of the memory map so that the file is not held open.
        layers[layer] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
    if not layers:
        raise VectorFileError(f"{p}: contains no direction tensors")
    sizes = {t.numel() for t in layers.values()}
    if len(sizes) > 1:
        raise VectorFileError(f"{p}: direction tensors have different lengths {sorted(sizes)}")
    metadata = _own_metadata(p, reader)
    hint = _string_field(reader, KEY_MODEL_HINT)
    metadata["source"] = "gguf"
    if hint is not None:
        metadata["model_hint"] = hint
    metadata.setdefault(
        "normalized",
        all(abs(float(torch.linalg.vector_norm(t)) - 1.0) < _UNIT_NORM_TOLERANCE for t in layers.values()),
    )
    try:
        vector = SteeringVector(layers, metadata)
    except ConfigError as exc:
        raise VectorFileError(f"{p}: {exc}") from None
    return checked_recipe(vector, p)


def _string_field(reader: GGUFReader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None


def _own_metadata(path: Path, reader: GGUFReader) -> dict[str, Any]:
    blob = _string_field(reader, KEY_STEERLAB_METADATA)
    if blob is None:
        return {}
    try:
        metadata = json.loads(blob)
    except json.JSONDecodeError as exc:
        raise VectorFileError(f"{path}: malformed JSON in {KEY_STEERLAB_METADATA}: {exc}") from None
    if not isinstance(metadata, dict):
        raise VectorFileError(f"{path}: {KEY_STEERLAB_METADATA} must be a JSON object")
    return metadata
