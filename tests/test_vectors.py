"""SteeringVector arithmetic, validation, and the steerlab safetensors file format."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from steerlab.core import vector as vectors
from steerlab.core.vector import (
    FORMAT,
    FORMAT_VERSION,
    SteeringVector,
    read_steering_file,
    write_steering_file,
)
from steerlab.errors import ConfigError, VectorFileError

HIDDEN = 8


def rand(seed: int, n: int = HIDDEN) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def make(layers: dict[int, int], **metadata: Any) -> SteeringVector:
    """A vector whose layer i holds rand(seed) for each {i: seed}."""
    return SteeringVector({i: rand(seed) for i, seed in layers.items()}, dict(metadata))


def header(**fields: str) -> dict[str, str]:
    base = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": "vector",
            "metadata": json.dumps({"kind": "vector", "hidden_size": HIDDEN})}
    base.update(fields)
    return base


# Construction


def test_layers_are_sorted_and_metadata_is_derived_and_copied() -> None:
    meta = {"model": "m", "hidden_size": 999}
    v = SteeringVector({5: rand(0), 2: rand(1)}, meta)
    assert list(v.layers) == [2, 5]
    assert v.hidden_size == HIDDEN
    assert v.metadata == {"model": "m", "hidden_size": HIDDEN, "layers": [2, 5]}
    assert meta == {"model": "m", "hidden_size": 999}


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ({}, "at least one layer"),
        ({-1: rand(0)}, "int >= 0"),
        ({"3": rand(0)}, "int >= 0"),
        ({True: rand(0)}, "int >= 0"),
        ({1: torch.zeros(2, HIDDEN)}, "1-D"),
        ({1: rand(0), 2: rand(1, HIDDEN + 1)}, "size"),
        ({1: torch.arange(HIDDEN)}, "floating-point"),
        ({1: torch.tensor([1.0, float("nan")])}, "NaN or infinite"),
        ({1: torch.tensor([1.0, float("inf")])}, "NaN or infinite"),
    ],
)
def test_construction_rejects_bad_layers(layers: dict[Any, torch.Tensor], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SteeringVector(layers)


def test_to_changes_dtype_and_keeps_metadata() -> None:
    v = make({1: 0}, model="m")
    half = v.to(dtype=torch.float16)
    assert half.layers[1].dtype == torch.float16
    assert half.metadata == v.metadata
    assert v.layers[1].dtype == torch.float32


# Arithmetic


def test_add_is_exact_over_the_union_of_layers() -> None:
    a, b = make({1: 1, 2: 2}, model="m", token="diff"), make({2: 3, 4: 4}, model="m", token="last")
    s = a + b
    assert list(s.layers) == [1, 2, 4]
    assert torch.equal(s.layers[1], a.layers[1])
    assert torch.equal(s.layers[2], a.layers[2] + b.layers[2])
    assert torch.equal(s.layers[4], b.layers[4])
    assert s.metadata["method"] == "combination"
    assert s.metadata["combined_from"] == [a.metadata, b.metadata]
    assert s.metadata["operations"] == [{"op": "add"}]
    assert s.metadata["model"] == "m"
    assert "token" not in s.metadata  # the operands disagree
    assert s.metadata["normalized"] is False


def test_subtract_treats_missing_layers_as_zero() -> None:
    a, b = make({1: 1, 2: 2}), make({2: 3, 4: 4})
    d = a - b
    assert torch.equal(d.layers[1], a.layers[1])
    assert torch.equal(d.layers[2], a.layers[2] - b.layers[2])
    assert torch.equal(d.layers[4], -b.layers[4])
    assert d.metadata["operations"] == [{"op": "subtract"}]


def test_scalar_operations_are_exact_and_logged() -> None:
    v = make({1: 1, 3: 3}, method="mean-diff", normalized=True)
    assert torch.equal((v * 2.5).layers[3], v.layers[3] * 2.5)
    assert torch.equal((3 * v).layers[1], v.layers[1] * 3)
    assert torch.equal((v / 4).layers[1], v.layers[1] / 4)
    assert torch.equal((-v).layers[3], -v.layers[3])
    scaled = v * 2.5
    assert scaled.metadata["method"] == "mean-diff"
    assert scaled.metadata["operations"] == [{"op": "multiply", "by": 2.5}]
    assert scaled.metadata["normalized"] is False
    assert (-v).metadata["normalized"] is True
    chained = (v * 2) / 4
    assert chained.metadata["operations"] == [{"op": "multiply", "by": 2.0}, {"op": "divide", "by": 4.0}]
    assert v.metadata.get("operations") is None  # the operand is untouched


def test_scalar_errors() -> None:
    v = make({1: 1})
    with pytest.raises(ConfigError, match="zero"):
        v / 0
    with pytest.raises(ConfigError):
        v * float("inf")
    with pytest.raises(TypeError):
        v * "2"
    with pytest.raises(TypeError):
        v + 1


def test_hidden_size_mismatch() -> None:
    a = make({1: 1})
    b = SteeringVector({1: rand(2, HIDDEN * 2)})
    with pytest.raises(ConfigError, match=rf"different hidden sizes \({HIDDEN} and {HIDDEN * 2}\)"):
        a + b
    with pytest.raises(ConfigError, match="hidden sizes"):
        a - b


def test_normalized_has_unit_norms() -> None:
    v = make({0: 0, 5: 5}) * 7
    n = v.normalized()
    for t in n.layers.values():
        assert torch.allclose(torch.linalg.vector_norm(t), torch.tensor(1.0))
    assert n.metadata["normalized"] is True
    assert n.metadata["operations"][-1] == {"op": "normalize"}
    with pytest.raises(ConfigError, match="layer 2 is all zeros"):
        SteeringVector({2: torch.zeros(HIDDEN)}).normalized()


def test_restrict() -> None:
    v = make({1: 1, 2: 2, 3: 3})
    r = v.restrict([3, 1])
    assert list(r.layers) == [1, 3]
    assert torch.equal(r.layers[3], v.layers[3])
    assert r.metadata["layers"] == [1, 3]
    assert r.metadata["operations"] == [{"op": "restrict", "layers": [1, 3]}]
    with pytest.raises(ConfigError, match=r"layers \[4, 7\] are not in the vector"):
        v.restrict([1, 4, 7])
    with pytest.raises(ConfigError, match="at least one layer"):
        v.restrict([])


# Files


def test_save_load_round_trip(tmp_path: Path) -> None:
    v = make({0: 0, 3: 3, 11: 11}, model="org/model", method="pca", token="diff", normalized=False,
             settings={"pairs": 12, "nested": {"b": [1, 2]}})
    path = tmp_path / "v.safetensors"
    v.save(path)
    w = SteeringVector.load(path)
    assert list(w.layers) == [0, 3, 11]
    for i in v.layers:
        assert w.layers[i].dtype == torch.float32
        assert torch.equal(w.layers[i], v.layers[i])
    assert w.metadata == v.metadata
    kind, tensors, metadata = read_steering_file(path)
    assert kind == "vector"
    assert sorted(tensors) == ["layer.0", "layer.11", "layer.3"]
    assert metadata["hidden_size"] == HIDDEN and metadata["layers"] == [0, 3, 11]


def test_save_converts_to_float32(tmp_path: Path) -> None:
    v = make({2: 2}).to(dtype=torch.bfloat16)
    v.save(tmp_path / "v.safetensors")
    w = SteeringVector.load(tmp_path / "v.safetensors")
    assert w.layers[2].dtype == torch.float32
    assert torch.equal(w.layers[2], v.layers[2].float())


def test_file_bytes_are_deterministic(tmp_path: Path) -> None:
    # safetensors' own writer orders the header metadata by a randomly seeded hash map, so repeated saves
    # in one process already differ with it; ours must not, whatever the metadata's insertion order.
    settings = [{"z": 1, "a": 2, "m": [3]}, {"m": [3], "a": 2, "z": 1}, {"a": 2, "z": 1, "m": [3]}]
    for k in range(6):
        make({1: 1, 2: 2}, model="m", settings=settings[k % 3]).save(tmp_path / f"{k}.safetensors")
    assert len({(tmp_path / f"{k}.safetensors").read_bytes() for k in range(6)}) == 1


def test_written_file_is_plain_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    make({4: 4}, model="m").save(tmp_path / "v.safetensors")
    with safe_open(str(tmp_path / "v.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert torch.equal(f.get_tensor("layer.4"), rand(4))
    assert meta["format"] == "steerlab" and meta["format_version"] == "1" and meta["kind"] == "vector"
    assert json.loads(meta["metadata"])["model"] == "m"


def _boom(*args: Any, **kwargs: Any) -> None:
    raise OSError("simulated failure")


@pytest.mark.parametrize("where", ["serialise", "fsync", "replace"])
@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                            existing: bool) -> None:
    target = tmp_path / "v.safetensors"
    if existing:
        target.write_bytes(b"previous contents")
    if where == "serialise":
        monkeypatch.setattr(vectors, "_safetensors_bytes", _boom)
    elif where == "fsync":  # the temporary file is fully written by then
        monkeypatch.setattr(os, "fsync", _boom)
    else:
        monkeypatch.setattr(os, "replace", _boom)
    with pytest.raises(OSError, match="simulated"):
        make({1: 1}).save(target)
    monkeypatch.undo()
    if existing:
        assert target.read_bytes() == b"previous contents"
        assert os.listdir(tmp_path) == ["v.safetensors"]
    else:
        assert os.listdir(tmp_path) == []


def test_written_file_has_normal_permissions(tmp_path: Path) -> None:
    make({1: 1}).save(tmp_path / "v.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "v.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


class _Tripwire:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zipped", [True, False])
def test_pickles_are_never_loaded(tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "v.pt"
    torch.save({"layer.1": torch.zeros(HIDDEN), "trap": _Tripwire(marker)}, path,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(VectorFileError, match="never loads pickles") as info:
        SteeringVector.load(path)
    assert str(path) in str(info.value)
    assert "PyTorch pickle" in str(info.value)
    assert not marker.exists()


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(VectorFileError, match=r"nope\.safetensors: no such file"):
        SteeringVector.load(tmp_path / "nope.safetensors")
    with pytest.raises(VectorFileError, match="is a directory"):
        SteeringVector.load(tmp_path)


@pytest.mark.parametrize("content", [b"layer,value\n1,0.5\n", b"", b"abc"])
def test_non_safetensors_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "v.safetensors"
    path.write_bytes(content)
    with pytest.raises(VectorFileError, match="not a safetensors file") as info:
        SteeringVector.load(path)
    assert str(path) in str(info.value)


def test_safetensors_without_steerlab_header(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, path)
    with pytest.raises(VectorFileError, match=r"not a steerlab file .*no 'format' key"):
        SteeringVector.load(path)
    save_file({"weight": torch.zeros(2, 2)}, path, metadata={"format": "pt"})
    with pytest.raises(VectorFileError, match="header format is 'pt', not 'steerlab'"):
        read_steering_file(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format_version": "2"}, "format version 2, but this steerlab reads up to version 1; upgrade"),
        ({"format_version": "one"}, "invalid format_version 'one'"),
        ({"format_version": "0"}, "invalid format_version '0'"),
        ({"metadata": "{not json"}, "malformed JSON metadata"),
        ({"metadata": "[1, 2]"}, "must be a JSON object"),
        ({"kind": ""}, "no 'kind'"),
    ],
)
def test_bad_headers(tmp_path: Path, fields: dict[str, str], message: str) -> None:
    path = tmp_path / "v.safetensors"
    save_file({"layer.1": rand(1)}, path, metadata=header(**fields))
    with pytest.raises(VectorFileError, match=message) as info:
        SteeringVector.load(path)
    assert str(path) in str(info.value)


def test_wrong_kind(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_steering_file(path, {"w": torch.zeros(3, 4)}, {"kind": "psr-model", "hidden_size": 4})
    with pytest.raises(VectorFileError, match="holds a steerlab 'psr-model', not a steering vector"):
        SteeringVector.load(path)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"layer.1": rand(1).half()}, "tensor 'layer.1' has dtype float16; vector files store float32"),
        ({"layers.1": rand(1)}, "tensor 'layers.1' is not named layer.<index>"),
        ({"layer.01": rand(1)}, "tensor 'layer.01' is not named"),
        ({"layer.-1": rand(1)}, "not named"),
        ({"layer.1": rand(1, HIDDEN + 2)}, rf"shape \[{HIDDEN + 2}\], expected \[{HIDDEN}\]"),
        ({"layer.1": torch.zeros(2, HIDDEN)}, "shape"),
        ({"layer.1": torch.full((HIDDEN,), float("nan"))}, "NaN or infinite"),
        ({}, "at least one layer"),
    ],
)
def test_bad_vector_tensors(tmp_path: Path, tensors: dict[str, torch.Tensor], message: str) -> None:
    path = tmp_path / "v.safetensors"
    write_steering_file(path, tensors, {"kind": "vector", "hidden_size": HIDDEN})
    with pytest.raises(VectorFileError, match=message) as info:
        SteeringVector.load(path)
    assert str(path) in str(info.value)


def test_missing_hidden_size(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    write_steering_file(path, {"layer.1": rand(1)}, {"kind": "vector"})
    with pytest.raises(VectorFileError, match="no valid 'hidden_size'"):
        SteeringVector.load(path)


def test_generic_writer_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
               "b": torch.ones(4, dtype=torch.bfloat16),
               "mask": torch.tensor([True, False]),
               "step": torch.tensor(7)}
    write_steering_file(path, tensors, {"kind": "psr-model", "seed": 3})
    kind, back, metadata = read_steering_file(path)
    assert kind == "psr-model"
    assert metadata == {"kind": "psr-model", "seed": 3}
    assert sorted(back) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)


def test_generic_writer_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match="'kind'"):
        write_steering_file(path, {}, {"seed": 1})
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        write_steering_file(path, {}, {"kind": "x", "bad": object()})
    with pytest.raises(ConfigError, match="reserved"):
        write_steering_file(path, {"__metadata__": torch.zeros(1)}, {"kind": "x"})
    with pytest.raises(ConfigError, match="cannot store"):
        write_steering_file(path, {"c": torch.zeros(2, dtype=torch.complex64)}, {"kind": "x"})
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        make({1: 1}, bad={1, 2}).save(path)
    assert not path.exists()


# Compatibility and summary


def test_check_compatible() -> None:
    v = make({1: 1, 30: 30}, model="org/base")
    v.check_compatible(HIDDEN, 31)
    v.check_compatible(HIDDEN, 31, model_name="org/other-finetune")  # names may differ
    with pytest.raises(VectorFileError) as info:
        v.check_compatible(HIDDEN * 2, 31, model_name="org/big")
    message = str(info.value)
    assert str(HIDDEN) in message and str(HIDDEN * 2) in message
    assert "org/base" in message and "org/big" in message
    expected = r"layer 30 out of range: the model has 24 layers, valid layers are 0\.\.23$"
    with pytest.raises(VectorFileError, match=expected):
        v.check_compatible(HIDDEN, 24)


def test_summary() -> None:
    v = make({2: 2, 4: 4}, model="m", method="pca", token="diff", settings={"pairs": 3}).normalized()
    s = v.summary()
    assert s["kind"] == "vector" and s["format_version"] == FORMAT_VERSION
    assert s["model"] == "m" and s["method"] == "pca" and s["token"] == "diff" and s["normalized"] is True
    assert s["hidden_size"] == HIDDEN and s["settings"] == {"pairs": 3}
    assert list(s["layers"]) == [2, 4]
    assert all(abs(norm - 1.0) < 1e-6 for norm in s["layers"].values())


def test_recipe_round_trips_and_is_checked_on_load(tmp_path: Path) -> None:
    from steerlab.core.recipe import Recipe

    vector = SteeringVector({3: torch.ones(HIDDEN), 5: torch.ones(HIDDEN)})
    chosen = vector.with_recipe(Recipe((5,), 0.5, "relative", "answer"))
    assert list(chosen.layers) == [5]
    chosen.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(tmp_path / "v.safetensors")
    assert loaded.recipe == Recipe((5,), 0.5, "relative", "answer")
    assert (loaded * 2.0).recipe is None and (loaded + loaded).recipe is None  # a derived vector was never selected
    with pytest.raises(ConfigError, match=r"the recipe names layer\(s\) \[7\]"):
        vector.with_recipe(Recipe((7,), 1.0))
    with pytest.raises(ConfigError, match="unknown positions 'generated' \\(now called 'answer'\\)"):
        Recipe((5,), 1.0, positions="generated")  # type: ignore[arg-type]
    broken = SteeringVector({5: torch.ones(HIDDEN)}, {"recipe": {"layers": [5], "strength": "lots"}})
    broken.save(tmp_path / "broken.safetensors")
    with pytest.raises(VectorFileError, match=r"broken\.safetensors: recipe needs 'layers'"):
        SteeringVector.load(tmp_path / "broken.safetensors")
