"""Measured effects on the real embedded model and real data (marked ``real``; the ``ci`` ones run in CI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from steerlab.data.items import MCItem
from steerlab.methods.pas import TaskFormat, scored_item
from steerlab.runtime.sweep import Scorer, score_grid

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smol() -> tuple[object, object]:
    from steerlab.models import load_model

    torch.manual_seed(0)
    return load_model()


def _behaviour_probability(scores: list[list[float]]) -> float:
    """Mean softmax probability of choice 0 (the behaviour answer) over the two answer log-likelihoods."""
    return sum(1.0 / (1.0 + math.exp(row[1] - row[0])) for row in scores) / len(scores)


@pytest.mark.ci
def test_survival_vector_shifts_answer_likelihood_both_ways(smol: tuple[object, object]) -> None:
    """Issue 2's acceptance measure: 128 pairs as answer texts, mean difference at the first differing token,
    held-out questions scored letter-free with every position steered."""
    from steerlab.data.tasks import load_caa_pairs
    from steerlab.methods.train import train_vector

    model, tok = smol
    pairs = load_caa_pairs("survival-instinct")
    layer = 10
    vector = train_vector(model, tok, pairs[:128], [layer])  # type: ignore[arg-type]
    held_out = [MCItem(f"q{k}", p.prompt or "", (p.positive, p.negative), 0) for k, p in enumerate(pairs[128:178])]
    fmt = TaskFormat(scoring="likelihood", positions="all")
    items = [scored_item(tok, item, fmt) for item in held_out]  # type: ignore[arg-type]
    result = score_grid(model, items, Scorer(), vector, [layer], [-4.0, 4.0])  # type: ignore[arg-type]
    base = _behaviour_probability(result.baseline)
    down = _behaviour_probability(result.grid[(layer, -4.0)])
    up = _behaviour_probability(result.grid[(layer, 4.0)])
    assert up >= base + 0.08, (base, up)
    assert down <= base - 0.08, (base, down)


@pytest.mark.ci
def test_cli_run_end_to_end_report_and_resume(tmp_path: Path) -> None:
    """A small real `steerlab run`: report structure, the delta recomputed from per-item results, the recipe in the
    vector file, and a rerun on the same folder that resumes from the cache and writes byte-identical outputs."""
    from steerlab.cli.main import main
    from steerlab.core.vector import SteeringVector

    out = tmp_path / "run"
    argv = ["run", "--task", "caa/survival-instinct", "--method", "ipas-wo,caa", "--layers", "9,12",
            "--strengths", "0.5,1", "--n-train", "24", "--n-val", "8", "--n-test", "16", "--icl-k", "1",
            "--random-directions", "4", "--positions", "answer", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("model", "model_identity", "task", "method", "verdict", "positions", "layer", "strength", "delta",
                "directional_gain", "controls", "methods", "timings", "scoring", "scoring_check", "unit"):
        assert key in report, key
    assert report["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert set(report["methods"]) == {"ipas-wo", "caa"}
    chosen = report["methods"][report["method"]]
    assert {(c["layer"], c["strength"]) for c in chosen["sweep"]} == {(9, 0.5), (9, 1.0), (12, 0.5), (12, 1.0)}
    item = chosen["per_item"][0]
    assert len(item["ids"]) == 16
    assert chosen["delta"]["value"] == pytest.approx(
        sum(s - b for s, b in zip(item["steered"], item["baseline"], strict=True)) / 16)
    assert chosen["directional_gain"]["value"] == pytest.approx(
        sum(s - r for s, r in zip(item["steered"], item["random_mean"], strict=True)) / 16)
    assert len(chosen["random_accuracies"]) == 4
    for name in ("report.md", "val_gain.png", "val_vs_strength.png", "test_effects.png", "vector.safetensors",
                 "vectors/ipas-wo.safetensors"):
        assert (out / name).is_file(), name
    vector = SteeringVector.load(out / "vector.safetensors")
    assert vector.recipe is not None
    assert (list(vector.recipe.layers), vector.recipe.strength, vector.recipe.positions) == (
        [report["layer"]], report["strength"], report["positions"])

    first = {p.name: p.read_bytes() for p in out.glob("*") if p.is_file()}
    assert main(argv) == 0  # everything comes from the cache: identical bytes, timings included
    assert {p.name: p.read_bytes() for p in out.glob("*") if p.is_file()} == first

    # A killed run loses at most the piece it was computing: drop some finished pieces and run again. Only the
    # recomputed pieces' timings may differ.
    for path in sorted((out / ".steerlab-cache").glob("*.json"))[::3]:
        path.unlink()
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert {k: v for k, v in again.items() if k != "timings"} == {k: v for k, v in report.items() if k != "timings"}
    for name in ("vector.safetensors", "val_gain.png", "val_vs_strength.png", "test_effects.png"):
        assert (out / name).read_bytes() == first[name], name
