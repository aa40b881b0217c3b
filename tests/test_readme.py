"""The README's Python examples run as written (in a folder holding the files they name)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.real


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text("utf-8"), flags=re.DOTALL)


def test_the_readme_has_its_three_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 3
    assert "train_vector" in blocks[0] and "run_task" in blocks[1] and "train_psr" in blocks[2]


@pytest.mark.ci
def test_first_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from steerlab import SteeringVector
    from steerlab.data.tasks import load_caa_pairs

    pairs = load_caa_pairs("survival-instinct")[:16]
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative}) + "\n" for p in pairs))
    for name, sign in (("a", 1.0), ("b", -1.0)):
        import torch

        SteeringVector({12: torch.full((576,), sign)}).save(tmp_path / f"{name}.safetensors")
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[0], "README.md", "exec"), {})
    assert SteeringVector.load(tmp_path / "survival.safetensors").layers.keys() == {12}


@pytest.mark.parametrize("index", [1, 2])
def test_slow_examples_run(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], "README.md", "exec"), {})
