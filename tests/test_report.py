"""The report files: every view rendered from report.json's data, byte-stable, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from steerlab.experiment import report as report_mod
from steerlab.experiment.plots import EFFECTS_PNG, GAIN_PNG, STRENGTH_PNG
from steerlab.experiment.report import render_markdown, result_table, write_report
from steerlab.experiment.results import MethodResult, RunReport, SeedOutcome, SweepCell
from steerlab.experiment.stats import Estimate

FILES = ["report.json", "report.md", GAIN_PNG, STRENGTH_PNG, EFFECTS_PNG]
LAYERS, STRENGTHS = [6, 9], [0.25, 0.5]


def _outcome(seed: int) -> SeedOutcome:
    # 8 test items: unsteered 3/8 right, steered 6/8, negated 2/8; two random directions at 4/8 and 3/8.
    return SeedOutcome(
        seed=seed, positions="answer", layer=9, strength=0.5, added_norm=12.5, val_baseline=0.4, val_accuracy=0.7,
        val_negated=0.3, test_ids=[f"q{i}" for i in range(8)],
        baseline=[1, 1, 1, 0, 0, 0, 0, 0], steered=[1, 1, 1, 1, 1, 1, 0, 0], negated=[1, 1, 0, 0, 0, 0, 0, 0],
        random=[[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]], rank=1, p_value=1 / 3)


def make_report(seeds: int = 1) -> RunReport:
    sweep = [SweepCell(p, layer, s, 0.4 + 0.1 * k, 0.4 - 0.05 * k)
             for p in ("last_prompt", "answer") for k, (layer, s) in enumerate(
                 (layer, s) for layer in LAYERS for s in STRENGTHS)]
    method = MethodResult(
        method="ipas-wo", seeds=[_outcome(s) for s in range(seeds)], delta=Estimate(0.375, 0.125, 0.625),
        directional_gain=Estimate(0.3125, 0.0625, 0.5625), negated_delta=Estimate(-0.125, -0.375, 0.0),
        random_delta=Estimate(0.0625, -0.125, 0.25), rank=1, p_value=1 / 3, random_directions=2,
        verdict="directional", selection_score=0.2, sweep=sweep, icl_steering=Estimate(0.25, 0.0, 0.5),
        icl_steering_accuracy=0.625)
    other = MethodResult(
        method="caa", seeds=[_outcome(s) for s in range(seeds)], delta=Estimate(0.125, -0.125, 0.375),
        directional_gain=Estimate(0.0, -0.25, 0.25), negated_delta=Estimate(0.0, -0.25, 0.25),
        random_delta=Estimate(0.125, 0.0, 0.25), rank=2, p_value=2 / 3, random_directions=2,
        verdict="no change", selection_score=0.1, sweep=sweep)
    return RunReport(
        steerlab_version="0.2.0", model={"model": "tiny", "dtype": "torch.float32", "weights": "w", "tokenizer": "t"},
        task="caa/survival-instinct", config={"n_train": 24, "n_val": 8, "n_test": 8, "seeds": seeds, "seed": 0,
                                              "select": "directional"},
        scoring="likelihood", scoring_check={"chosen": "likelihood", "reason": "set by --scoring"}, unit="relative",
        method="ipas-wo", methods={"ipas-wo": method, "caa": other}, skipped={"pas-full": "needs right answers"},
        controls={"constant_letter": {"letter": "A", "accuracy": 0.5},
                  "icl": {"k": 2, "test_accuracy": 0.5, "value": 0.125, "low": 0.0, "high": 0.25},
                  "shortest_answer": {"accuracy": 0.375}},
        letters={"correct": {"A": 4, "B": 4}, "predicted_baseline": {"A": 6, "B": 2}},
        grid={"positions": ["last_prompt", "answer"], "layers": LAYERS, "strengths": STRENGTHS},
        timings={"sweep": 1.5, "total": 3.0})


def test_writes_every_file_and_json_round_trips(tmp_path: Path) -> None:
    report = make_report().to_dict()
    written = write_report(report, tmp_path)
    assert sorted(p.name for p in written) == sorted(FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    for name in FILES[2:]:
        image = mpimg.imread(tmp_path / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, name
        assert image.std() > 0.05, name  # not a blank canvas


def test_same_report_gives_identical_bytes(tmp_path: Path) -> None:
    write_report(make_report(2).to_dict(), tmp_path / "a")
    write_report(make_report(2).to_dict(), tmp_path / "b")
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_summary_means_are_the_per_item_means() -> None:
    summary = make_report().to_dict()["methods"]["ipas-wo"]
    assert summary["test_accuracy"] == {"baseline": 3 / 8, "steered": 6 / 8, "negated": 2 / 8, "random": 3.5 / 8}
    assert summary["random_accuracies"] == [4 / 8, 3 / 8]
    assert summary["per_item"][0]["random_mean"] == [1, 1, 1, 0.5, 0, 0, 0, 0]
    assert summary["per_seed"][0]["val_accuracy_optimistic"] == 0.7
    assert summary["sweep"][0]["gain"] == pytest.approx((0.4 - 0.4) / 2)
    assert summary["sweep"][1]["gain"] == pytest.approx((0.5 - 0.35) / 2)


def test_markdown_headline_tables_and_labels() -> None:
    md = render_markdown(make_report(2).to_dict())
    assert ("ipas-wo at layer 9, strength 0.5 (relative), positions answer (first of 2 seeds): test accuracy "
            "0.375 -> 0.750, delta +0.375 [+0.125, +0.625]; directional gain over 2 random directions of the "
            "same norm +0.312 [+0.062, +0.562], rank 1 of 3 (p = 0.333). Verdict: **directional**") in md
    assert ("| ipas-wo (chosen) | directional | +0.375 [+0.125, +0.625] | +0.312 [+0.062, +0.562] | "
            "-0.125 [-0.375, +0.000] | +0.062 [-0.125, +0.250] | 1/3 (0.333) | 0.375 | 0.750 |") in md
    assert "| caa | no change |" in md
    assert "Skipped: pas-full (needs right answers)." in md
    assert "optimistic: it is a maximum over the grid" in md
    assert "| ipas-wo | 1 | answer | 9 | 0.5 | 12.5 | 0.400 | 0.700 | 0.300 | 0.375 | 0.750 | 0.250 | 0.438 | 1 |" in md
    assert "| negated vector | 0.250 | -0.125 [-0.375, +0.000] |" in md
    assert "| random directions (mean of 2) | 0.438 | +0.062 [-0.125, +0.250] |" in md
    assert "| ICL + steering (k=2) | 0.625 | +0.250 [+0.000, +0.500] |" in md
    assert "| always the shortest answer | 0.375 | - |" in md
    assert "Positions **answer**:" in md and "Positions **last_prompt**:" in md
    assert "| 9 | 0.60 / 0.30 | **0.70 / 0.25** |" in md  # the chosen point, +s / -s
    for name in FILES[2:]:
        assert f"]({name})" in md


def test_result_table() -> None:
    table = result_table(make_report().to_dict())
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["method", "verdict"]
    assert lines[1].split()[:3] == ["ipas-wo", "(chosen)", "directional"]
    assert len({len(line) for line in lines[:3]}) <= 2  # fixed width (the last column may be right-trimmed)
    assert lines[-2] == "chosen: ipas-wo (seed 0: layer 9, strength 0.5 (relative), positions answer)"
    assert lines[-1] == ("verdict: directional: the vector beats random directions of its norm (directional gain "
                         "above 0)")


def test_failed_render_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(report: object) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report_mod, "plot_gain", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(make_report().to_dict(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_mod, "png", lambda fig: repr(fig).encode())  # rendering is not under test here
    write_report(make_report().to_dict(), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    original = Path.write_bytes
    calls = []

    def failing_write(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == 4:
            raise OSError("disk full")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_report(make_report(3).to_dict(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temporaries left behind
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before


def test_non_json_report_is_rejected_before_writing(tmp_path: Path) -> None:
    report = make_report().to_dict()
    report["methods"]["caa"]["p_value"] = float("nan")
    with pytest.raises(report_mod.ConfigError, match="JSON"):
        write_report(report, tmp_path / "out")
    assert not (tmp_path / "out").exists()
