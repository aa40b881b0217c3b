"""llama.cpp control-vector GGUF export and import."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError, VectorFileError
from steerlab.interop.llamacpp import export_gguf, import_gguf

HIDDEN = 16


def rand(seed: int) -> torch.Tensor:
    return torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))


def vector(layers: tuple[int, ...] = (1, 5, 12), **metadata: Any) -> SteeringVector:
    return SteeringVector({i: rand(i) for i in layers}, dict(metadata))


def write_gguf(path: Path, tensors: dict[str, np.ndarray[Any, Any]], arch: str = "controlvector",
               **strings: str) -> None:
    """A GGUF written the way llama.cpp's cvector-generator does, with no steerlab metadata."""
    writer = GGUFWriter(path, arch)
    for key, value in strings.items():
        writer.add_string(key, value)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_round_trip_is_exact(tmp_path: Path) -> None:
    v = vector(model="Qwen/Qwen2.5-0.5B-Instruct", method="mean-diff", normalized=False,
               settings={"pairs": 4})
    path = tmp_path / "v.gguf"
    export_gguf(v, path, model_hint="qwen2")
    w = import_gguf(path)
    assert list(w.layers) == list(v.layers)
    for i in v.layers:
        assert w.layers[i].dtype == torch.float32
        assert torch.equal(w.layers[i], v.layers[i])
    assert w.metadata == {**v.metadata, "source": "gguf", "model_hint": "qwen2"}


def test_file_follows_llama_cpp_layout(tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    export_gguf(vector(), path, model_hint="llama")
    reader = GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    # cvector-generator writes the number of direction tensors here.
    assert fields["controlvector.layer_count"] == 3
    # Our layer N is llama.cpp's direction.N: both mean "added to the output of 0-based block N".
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.5", "direction.12"]
    for t in reader.tensors:
        assert t.tensor_type == GGMLQuantizationType.F32
        assert [int(n) for n in t.shape] == [HIDDEN]
        layer = int(t.name.split(".")[1])
        assert np.array_equal(np.asarray(t.data), rand(layer).numpy())


def test_model_hint_defaults_to_the_model(tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    export_gguf(vector(model="org/m"), path)
    assert GGUFReader(path).get_field("controlvector.model_hint").contents() == "org/m"  # type: ignore[union-attr]
    export_gguf(vector(), path)
    assert GGUFReader(path).get_field("controlvector.model_hint") is None


def test_export_is_deterministic(tmp_path: Path) -> None:
    export_gguf(vector(model="m"), tmp_path / "a.gguf")
    export_gguf(vector(model="m"), tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_layer_zero_cannot_be_exported(tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    with pytest.raises(ConfigError, match="layer 0"):
        export_gguf(vector((0, 3)), path)
    assert not path.exists()
    export_gguf(vector((0, 3)).restrict([3]), path)
    assert list(import_gguf(path).layers) == [3]


def test_a_vector_for_attention_or_mlp_outputs_cannot_be_exported(tmp_path: Path) -> None:
    from steerlab.core.recipe import Recipe

    path = tmp_path / "v.gguf"
    with pytest.raises(ConfigError, match="steers the mlp output of its blocks"):
        export_gguf(vector((3,)).with_recipe(Recipe((3,), 1.0, target="mlp")), path)
    assert not path.exists()


def test_failed_export_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.gguf"
    path.write_bytes(b"previous")

    def boom(self: GGUFWriter, *, progress: bool = False) -> None:
        raise OSError("simulated failure")

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="simulated"):
        export_gguf(vector(), path)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["v.gguf"]


def test_import_foreign_control_vector(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    unit = (rand(2) / torch.linalg.vector_norm(rand(2))).numpy()
    write_gguf(path, {"direction.2": unit, "direction.1": unit * 0.5},
               **{"controlvector.model_hint": "llama"})
    v = import_gguf(path)
    assert list(v.layers) == [1, 2]
    assert torch.equal(v.layers[2], torch.from_numpy(unit))
    assert v.metadata["source"] == "gguf" and v.metadata["model_hint"] == "llama"
    assert v.metadata["normalized"] is False  # layer 1 has norm 0.5
    write_gguf(path, {"direction.3": unit})
    assert import_gguf(path).metadata["normalized"] is True


def test_import_rejects_other_architectures(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    write_gguf(path, {"token_embd.weight": np.zeros((4, HIDDEN), dtype=np.float32)}, arch="llama")
    with pytest.raises(VectorFileError, match="architecture is 'llama', not 'controlvector'") as info:
        import_gguf(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"dir.1": np.zeros(HIDDEN, dtype=np.float32)}, "tensor 'dir.1' is not named direction.<layer>"),
        ({"direction.x": np.zeros(HIDDEN, dtype=np.float32)}, "not named direction"),
        ({"direction.0": np.zeros(HIDDEN, dtype=np.float32)}, "direction.0 is invalid"),
        ({"direction.1": np.zeros(HIDDEN, dtype=np.float16)}, "type F16; control vectors are F32"),
        ({"direction.1": np.zeros((2, HIDDEN), dtype=np.float32)}, "control vectors are 1-D"),
        ({"direction.1": np.zeros(HIDDEN, dtype=np.float32), "direction.2": np.zeros(4, dtype=np.float32)},
         "different lengths"),
        ({"direction.1": np.full(HIDDEN, np.inf, dtype=np.float32)}, "NaN or infinite"),
        ({}, "no direction tensors"),
    ],
)
def test_import_rejects_bad_tensors(tmp_path: Path, tensors: dict[str, np.ndarray[Any, Any]],
                                    message: str) -> None:
    path = tmp_path / "cv.gguf"
    write_gguf(path, tensors)
    with pytest.raises(VectorFileError, match=message) as info:
        import_gguf(path)
    assert str(path) in str(info.value)


def test_import_rejects_non_gguf(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match="no such file"):
        import_gguf(tmp_path / "missing.gguf")
    path = tmp_path / "v.safetensors"
    vector().save(path)
    with pytest.raises(VectorFileError, match="not a readable GGUF file"):
        import_gguf(path)


def test_import_rejects_malformed_steerlab_metadata(tmp_path: Path) -> None:
    path = tmp_path / "cv.gguf"
    write_gguf(path, {"direction.1": rand(1).numpy()}, **{"steerlab.metadata": "{oops"})
    with pytest.raises(VectorFileError, match=r"malformed JSON in steerlab\.metadata"):
        import_gguf(path)


@pytest.mark.parametrize(("recipe", "message"), [
    ({"layers": [3], "strength": 1.0}, r"cv\.gguf: the recipe names layers \[3\] but the file has \[1\]"),
    ({"layers": [1], "strength": 1.0, "speed": 2}, r"cv\.gguf: recipe has unknown field\(s\) \['speed'\]"),
])
def test_import_rejects_a_recipe_the_vector_cannot_follow(tmp_path: Path, recipe: dict[str, Any],
                                                          message: str) -> None:
    path = tmp_path / "cv.gguf"
    write_gguf(path, {"direction.1": rand(1).numpy()}, **{"steerlab.metadata": json.dumps({"recipe": recipe})})
    with pytest.raises(VectorFileError, match=message):
        import_gguf(path)
