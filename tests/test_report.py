from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from steerlab.experiment import report as report_mod
from steerlab.experiment.report import render_markdown, result_table, write_report

LAYERS = [6, 9, 12]
STRENGTHS = [0.5, 1, 2, 4]
FILES = ["report.json", "report.md", "val_heatmap.png", "val_vs_strength.png", "val_vs_layer.png",
         "test_deltas.png"]


def _sweep(peak: float) -> list[dict[str, Any]]:
    # Peaks at layer 9, strength 4.
    return [
        {"layer": layer, "strength": s,
         "val_accuracy": round(0.5 + peak * (1 - abs(layer - 9) / 6) * s / 4, 4)}
        for layer in LAYERS
        for s in STRENGTHS
    ]


def _method(layer: int, strength: float, val: float, steered: float, delta: float, ci: list[Any],
            seeds: int, peak: float) -> dict[str, Any]:
    per_seed = [
        {"seed": i, "layer": layer, "strength": strength, "baseline_test_accuracy": 0.52,
         "steered_test_accuracy": steered + 0.01 * i, "delta": delta + 0.01 * i,
         "delta_ci95": [ci[0], ci[1]] if ci[0] is None else [ci[0] + 0.01 * i, ci[1] + 0.01 * i]}
        for i in range(seeds)
    ]
    return {
        "layer": layer, "strength": strength, "val_accuracy": val, "baseline_test_accuracy": 0.52,
        "steered_test_accuracy": steered, "delta": delta, "delta_ci95": ci,
        "controls": {
            "random_direction": {"test_accuracy": 0.52, "delta": 0.0, "delta_ci95": [-0.02, 0.02]},
            "icl_steering": {"k": 4, "test_accuracy": 0.61, "delta": 0.09, "delta_ci95": [0.02, 0.16]},
        },
        "per_seed": per_seed,
        "sweep": _sweep(peak),
    }


def make_report(seeds: int = 1) -> dict[str, Any]:
    return {
        "steerlab_version": "0.1.0",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "task": "caa/survival-instinct",
        "method": "ipas-wo",
        "methods_run": ["pas-full", "ipas-wo", "caa"],
        "scoring": "likelihood",
        "scoring_check": {"letters_agreement": 0.12, "letters_train_accuracy": 0.5,
                          "likelihood_train_accuracy": 0.55, "chosen": "likelihood",
                          "reason": "letter answers agree with likelihood on only 12% of training items"},
        "steer_positions": "answer",
        "layer": 9, "strength": 4.0,
        "n_train": 128, "n_val": 64, "n_test": 100, "seeds": seeds, "seed": 0,
        "baseline": {"test_accuracy": 0.52, "val_accuracy": 0.5},
        "steered": {"test_accuracy": 0.6, "val_accuracy": 0.58},
        "delta": 0.08, "delta_ci95": [0.02, 0.14], "ci_method": "paired t-interval over test items",
        "controls": {
            "constant_letter": {"letter": "A", "accuracy": 0.51},
            "random_direction": {"test_accuracy": 0.52, "delta": 0.0, "delta_ci95": [-0.02, 0.02]},
            "icl": {"k": 4, "test_accuracy": 0.55, "delta": 0.03, "delta_ci95": [-0.03, 0.09]},
            "icl_steering": {"k": 4, "test_accuracy": 0.61, "delta": 0.09, "delta_ci95": [0.02, 0.16]},
        },
        "letters": {"correct": {"A": 50, "B": 50}, "predicted_baseline": {"A": 60, "B": 40},
                    "predicted_steered": {"A": 55, "B": 45}},
        "grid": {"layers": LAYERS, "strengths": STRENGTHS},
        "sweep": _sweep(0.08),
        "methods": {
            "pas-full": _method(12, 2.0, 0.55, 0.47, -0.05, [None, None], seeds, 0.05),
            "ipas-wo": _method(9, 4.0, 0.58, 0.6, 0.08, [0.02, 0.14], seeds, 0.08),
            "caa": {"skipped": "caa needs at least 2 training items"},
        },
        "timings": {"load_model": 1.2, "baseline": 10.0, "vectors": 5.0, "val_unsteered_pass": 3.0,
                    "sweep": 20.0, "test": 4.0, "controls": 8.0, "total": 60.0},
    }


@pytest.fixture(scope="module", params=[1, 3], ids=["1-seed", "3-seeds"])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[dict[str, Any], Path, list[Path]]:
    report = make_report(request.param)
    out = tmp_path_factory.mktemp("report") / "nested" / "out"
    return report, out, write_report(report, out)


def test_writes_every_file(written: tuple[dict[str, Any], Path, list[Path]]) -> None:
    _, out, paths = written
    assert paths == [out / name for name in FILES]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_json_round_trips(written: tuple[dict[str, Any], Path, list[Path]]) -> None:
    report, out, _ = written
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == report


def test_same_report_gives_identical_bytes(written: tuple[dict[str, Any], Path, list[Path]],
                                           tmp_path: Path) -> None:
    report, out, _ = written
    write_report(copy.deepcopy(report), tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_pngs_are_real_images(written: tuple[dict[str, Any], Path, list[Path]]) -> None:
    _, out, _ = written
    for name in FILES[2:]:
        image = mpimg.imread(out / name)
        assert image.ndim == 3 and image.shape[2] in (3, 4), name
        assert image.shape[0] >= 400 and image.shape[1] >= 600, (name, image.shape)
        assert image.std() > 0.05, name  # not a blank canvas


def test_markdown_headline_and_tables() -> None:
    md = render_markdown(make_report())
    assert ("ipas-wo at layer 9, strength 4: test accuracy 0.520 -> 0.600, delta +0.080 "
            "[95% CI +0.020, +0.140]") in md
    assert "The 95% interval excludes 0: steering raised test accuracy" in md
    assert "| **ipas-wo** (chosen) | 9 | 4 | 0.580 | 0.520 | 0.600 | +0.080 | [+0.020, +0.140] |" in md
    assert "| pas-full | 12 | 2 | 0.550 | 0.520 | 0.470 | -0.050 | n/a |" in md
    assert "Skipped: caa (caa needs at least 2 training items)." in md
    assert "| ICL + steering (k=4) | 0.610 | +0.090 | [+0.020, +0.160] |" in md
    assert "| random direction | 0.520 | +0.000 | [-0.020, +0.020] |" in md
    assert "| ICL (k=4) | 0.550 | +0.030 | [-0.030, +0.090] |" in md
    assert "Scoring: **likelihood** (letter answers agree" in md
    assert "| A | 50 | 60 | 55 |" in md
    assert "Best constant-letter accuracy: 0.510 (always answering A)." in md
    assert "| total | 60.0 |" in md
    assert "| 9 | 0.510 | 0.520 | 0.540 | **0.580** |" in md
    for name in FILES[2:]:
        assert f"]({name})" in md
    assert "### Per seed" not in md


def test_markdown_per_seed_and_missing_interval() -> None:
    report = make_report(3)
    assert "| ipas-wo | 2 | 9 | 4 | 0.520 | 0.620 | +0.100 | [+0.040, +0.160] |" in render_markdown(report)
    report["delta_ci95"] = [None, None]
    md = render_markdown(report)
    assert "delta +0.080 [95% CI n/a]" in md
    assert "No 95% interval could be computed" in md


def test_result_table() -> None:
    table = result_table(make_report())
    lines = table.splitlines()
    assert "\x1b" not in table
    assert lines[0].split() == ["method", "layer", "strength", "val", "acc", "test", "baseline", "test",
                                "steered", "delta", "95%", "CI"]
    assert lines[1].split() == ["pas-full", "12", "2", "0.550", "0.520", "0.470", "-0.050", "n/a"]
    assert lines[2].split() == ["ipas-wo", "(chosen)", "9", "4", "0.580", "0.520", "0.600", "+0.080",
                                "[+0.020,", "+0.140]"]
    assert lines[3] == "caa               skipped: caa needs at least 2 training items"
    # Fixed width: every column of the method rows ends at the same place.
    assert len({len(line) for line in lines[:2]}) == 1
    for label in ("random direction", "ICL (k=4)", "ICL + steering (k=4)", "best constant letter (A)"):
        assert any(line.startswith(label) for line in lines), label
    assert lines[-1] == ("chosen: ipas-wo (layer 9, strength 4); "
                         "the 95% interval excludes 0: steering raised test accuracy")
    assert "(layer 9, strength 4, 3 seeds)" in result_table(make_report(3))


def test_single_method_without_optional_parts(tmp_path: Path) -> None:
    report = make_report()
    report["methods"] = {"ipas-wo": report["methods"]["ipas-wo"]}
    for key in ("controls", "letters", "timings", "scoring_check"):
        del report[key]
    report["delta_ci95"] = [None, None]
    write_report(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert "interval could be computed" in result_table(report)


def test_failed_render_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(report: dict[str, Any]) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report_mod, "_plot_heatmap", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(make_report(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rendering is not under test here, so skip its cost.
    monkeypatch.setattr(report_mod, "_png", lambda fig: repr(fig).encode())
    write_report(make_report(), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    original = Path.write_bytes
    calls = []

    def failing_write(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == 4:
            raise OSError("disk full")
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    changed = make_report(3)
    changed["delta"] = 0.5
    with pytest.raises(OSError, match="disk full"):
        write_report(changed, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temporaries left behind
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before


def test_non_json_report_is_rejected_before_writing(tmp_path: Path) -> None:
    report = make_report()
    report["delta"] = float("nan")
    with pytest.raises(report_mod.ConfigError, match="JSON"):
        write_report(report, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_verdict_says_when_a_random_direction_did_as_well() -> None:
    report = make_report()
    report["controls"]["random_direction"]["steered_minus_random"] = {"delta": 0.01, "delta_ci95": [-0.05, 0.07]}
    table = result_table(report)
    assert ("steering raised test accuracy, but no more than a random direction of the same norm did "
            "(steered - random +0.010 [-0.050, +0.070]): the gain is not specific to this direction") in table
    report["controls"]["random_direction"]["steered_minus_random"] = {"delta": 0.08, "delta_ci95": [0.02, 0.14]}
    assert ("steering raised test accuracy, and more than a random direction of the same norm did "
            "(steered - random +0.080 [+0.020, +0.140])") in render_markdown(report)
    report["controls"]["shortest_answer"] = {"accuracy": 0.59}
    assert "always the shortest answer     0.590" in result_table(report)
