"""The `steerlab` command end to end on a tiny model saved to a folder: outputs, round trips, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steerlab.cli.main import main
from steerlab.core.vector import SteeringVector
from tests.conftest import HIDDEN, build_model, build_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_model("llama").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"w{k} w{k + 1} w{k + 2}", "positive": f"w{k + 3} (A)", "negative": f"w{k + 3} (B)"}
            for k in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_train_info_generate_and_gguf_round_trip(model_dir: Path, pairs: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.safetensors"
    assert main(["train", "--model", str(model_dir), "--pairs", str(pairs), "--layers", "0-2", "--out", str(out),
                 "--quiet"]) == 0
    vector = SteeringVector.load(out)
    assert sorted(vector.layers) == [0, 1, 2] and vector.hidden_size == HIDDEN
    assert vector.metadata["method"] == "mean-diff" and vector.metadata["token"] == "diff"
    capsys.readouterr()

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "vector" and sorted(info["layers"]) == ["0", "1", "2"]

    gguf, back = tmp_path / "v.gguf", tmp_path / "back.safetensors"
    # llama.cpp has no direction for block 0: export the layers it can represent.
    assert main(["export-gguf", str(out), str(gguf)]) == 2
    assert "layer 0" in _error_line(capsys)
    assert not gguf.exists()
    restricted = tmp_path / "v12.safetensors"
    vector.restrict([1, 2]).save(restricted)
    assert main(["export-gguf", str(restricted), str(gguf), "--model-hint", "tiny"]) == 0
    assert main(["import-gguf", str(gguf), str(back)]) == 0
    again = SteeringVector.load(back)
    assert sorted(again.layers) == [1, 2]
    for layer in (1, 2):
        assert torch.equal(again.layers[layer], vector.layers[layer])
    capsys.readouterr()

    assert main(["generate", "--model", str(model_dir), "--prompt", "w5 w6", "--vector", str(out),
                 "--strength=-4,4", "--layers", "1", "--max-new-tokens", "4", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert list(rows[0]) == ["prompt", "unsteered", "steered, strength -4", "steered, strength 4"]


def test_generate_unsteered_column_is_plain_generation(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from steerlab.models import load_model
    from steerlab.runtime.generate import generate

    assert main(["generate", "--model", str(model_dir), "--prompt", "w5 w6", "--prompt", "w7",
                 "--max-new-tokens", "5", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    model, tok = load_model(str(model_dir))
    assert [r["unsteered"] for r in rows] == generate(model, tok, ["w5 w6", "w7"], max_new_tokens=5)


@pytest.mark.parametrize(("argv", "expected"), [
    (["info", "missing.safetensors"], "missing.safetensors: no such file"),
    (["train", "--pairs", "missing.jsonl", "--layers", "1", "--out", "x.safetensors"], "missing.jsonl"),
    (["generate", "--prompt", "hi", "--strength", "2"], "--strength and --layers need --vector"),
    (["run", "--method", "nope"], "unknown method 'nope'"),
    (["run", "--task", "caa/nope"], "caa/nope"),
    (["run", "--task", "items.jsonl"], "use --data"),  # not a file here either: the flag is named
    (["run", "--strengths=-1,1"], "the directional rule takes positive strengths"),
    (["run", "--positions", "generated"], "unknown positions 'generated' (now called 'answer')"),
])
def test_errors_are_one_line(argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"steerlab {argv[0]}: error: ") and expected in line, line


@pytest.mark.parametrize(("record", "expected"), [
    ({"question": "q", "choices": ["a", "b"]}, "field 'answer'"),
    ({"question": "q", "choices": ["a", "b"], "answer": "c"}, "'c'"),
    ({"question": "q", "choices": ["a"], "answer": 0}, "2"),
])
@pytest.mark.parametrize("flag", ["--data", "--task"])  # a file given where a task name goes is read as data
def test_run_bad_data_names_file_line_field_and_writes_nothing(
        record: dict[str, object], expected: str, flag: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "items.jsonl"
    good = {"question": "fine", "choices": ["x", "y"], "answer": 0}
    data.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    out = tmp_path / "out"
    assert main(["run", flag, str(data), "--out", str(out), "--quiet"]) == 2
    line = _error_line(capsys)
    assert f"{data}:2" in line and expected in line, line
    assert not out.exists()


def test_run_duplicate_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "items.jsonl"
    row = {"id": "same", "question": "q", "choices": ["x", "y"], "answer": 1}
    data.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    line = _error_line(capsys)
    assert f"{data}:2" in line and "same" in line, line


def test_tasks_lists_the_built_in_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--json"]) == 0
    tasks = {t["name"]: t["size"] for t in json.loads(capsys.readouterr().out)}
    assert tasks["caa/survival-instinct"] == 953 and tasks["bbq"] == 1012 and tasks["mmlu"] == 2842


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--layers", "12-8"], "argument --layers: the range 12-8 runs backwards: write 8-12"),
    (["run", "--strengths", "1,nan"], "argument --strengths: expected finite numbers, got '1,nan'"),
    (["run", "--strengths", "inf"], "argument --strengths: expected finite numbers, got 'inf'"),
    (["condition", "train", "--positive", "a", "--negative", "b", "--out", "c", "--limit", "-1"],
     "argument --limit: expected a count of at least 1, got -1"),  # it cut the last prompt of each set
    (["suite", "--tasks", "a", "--workers", "0"], "argument --workers: expected a count of at least 1, got 0"),
    # Files written after the work: a missing folder is found before the work, not after it.
    (["psr", "train", "--instruction", "french", "--out", "no/such/p.safetensors"],
     "argument --out: the folder no/such does not exist: create it first"),
    (["export-gguf", "v.safetensors", "no/such/v.gguf"], "argument out: the folder no/such does not exist"),
])
def test_list_flags_refuse_what_they_cannot_mean(argv: list[str], expected: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
