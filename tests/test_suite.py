"""Suites run serially on a tiny model saved to a folder: the aggregate against independent runs, fault recording,
resumption after a real kill, the spec file and its errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import build_model, build_tokenizer

from steerlab.cli.main import main
from steerlab.errors import DataError
from steerlab.experiment.config import RunConfig
from steerlab.experiment.runner import run_task
from steerlab.models import load_model
from steerlab.suite.aggregate import aggregate
from steerlab.suite.report import SUITE_JSON, SUITE_MD
from steerlab.suite.run import run_suite
from steerlab.suite.spec import SuiteSpec, Unit, load_spec
from steerlab.suite.unit import execute_unit, is_finished, task_items, unit_folder

WORDS = [f"w{i}" for i in range(11, 60)]
RUN = RunConfig(methods=("caa",), layers=(0, 1), strengths=(0.5, 2.0), n_train=12, n_val=6, n_test=10,
                random_directions=4, icl_k=1, scoring="letters")


def write_items(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = [json.dumps({"id": f"i{k}", "question": " ".join(rng.choice(WORDS) for _ in range(4)),
                         "choices": [" ".join(rng.choice(WORDS) for _ in range(2)) for _ in range(2)],
                         "answer": k % 2}) for k in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_suite(root: Path) -> SuiteSpec:
    """2 tasks x 2 seeds on a tiny llama saved like any model folder, and one task whose data is bad."""
    model = root / "tiny-llama"
    build_model("llama").save_pretrained(model)
    build_tokenizer().save_pretrained(model)
    tasks = (str(write_items(root / "alpha.jsonl", 40, 1)), str(write_items(root / "beta.jsonl", 40, 2)))
    bad = root / "broken.jsonl"
    bad.write_text(write_items(root / "tmp.jsonl", 40, 3).read_text().replace('"answer": 1}', '"answer": 7}', 1))
    return SuiteSpec(tasks=(*tasks, str(bad)), methods=("caa",), seeds=(0, 1), models=(str(model),), run=RUN)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[SuiteSpec, Path]:
    root = tmp_path_factory.mktemp("suite")
    spec = make_suite(root)
    run_suite(spec, root / "serial")
    return spec, root / "serial"


def test_each_cell_is_the_multi_seed_run_of_its_task(suite: tuple[SuiteSpec, Path]) -> None:
    # Units are single seeds; the cell pools them exactly as one `steerlab run --seeds 2` pools its seeds.
    spec, out = suite
    report = aggregate(spec, out)
    model, tok = load_model(spec.models[0])
    for task in spec.tasks[:2]:
        cell = next(c for c in report.cells if c.task == task)
        whole = run_task(model, tok, task_items(task), replace(RUN, task=task, seeds=2)).report.methods["caa"]
        assert cell.seeds == (0, 1)
        assert cell.delta == whole.delta and cell.directional_gain == whole.directional_gain
        assert cell.verdict == whole.verdict
        per_seed = [u for u in report.units if u.unit.task == task]
        assert [(u.layer, u.strength) for u in per_seed] == [(s.layer, s.strength) for s in whole.seeds]


def test_a_unit_with_bad_data_is_recorded_and_the_others_finish(suite: tuple[SuiteSpec, Path]) -> None:
    spec, out = suite
    data = json.loads((out / SUITE_JSON).read_text())
    assert (data["units_total"], data["units_done"], data["units_failed"]) == (6, 4, 2)
    failed = [u for u in data["units"] if u["outcome"] == "failed"]
    assert {u["unit"]["task"] for u in failed} == {spec.tasks[2]}
    # The error names the file, the line and the field, as `steerlab run` would.
    assert all(f"{spec.tasks[2]}:2" in u["error"] and "answer" in u["error"] for u in failed)
    assert [c["task"] for c in data["cells"]] == list(spec.tasks[:2])
    markdown = (out / SUITE_MD).read_text()
    assert "4 of 6 units done, 2 failed" in markdown and failed[0]["error"].replace("|", "\\|") in markdown


def test_a_model_that_does_not_load_fails_its_units_only(suite: tuple[SuiteSpec, Path], tmp_path: Path) -> None:
    spec, serial = suite
    out = tmp_path / "more"
    shutil.copytree(serial, out)
    missing = str(tmp_path / "no-such-model")
    grown = replace(spec, models=(*spec.models, missing))
    report = run_suite(grown, out)  # the first model's units are finished: only the new model's run
    assert [u.outcome for u in report.units[:6]] == [u.outcome for u in aggregate(spec, serial).units]
    assert [u.error for u in report.units[6:]] == [
        f"the model {missing} did not load: steerlab.errors.ModelError: model path {missing} does not exist"] * 6
    assert report.cells == aggregate(spec, serial).cells


def test_changed_settings_make_a_finished_unit_run_again(suite: tuple[SuiteSpec, Path]) -> None:
    spec, out = suite
    unit = spec.units()[0]
    assert is_finished(out, spec, unit)
    assert not is_finished(out, replace(spec, run=replace(RUN, n_test=8)), unit)
    assert not is_finished(out, replace(spec, dtype="bf16"), unit)


def test_a_unit_run_again_keeps_no_file_of_its_earlier_run(suite: tuple[SuiteSpec, Path], tmp_path: Path) -> None:
    spec, serial = suite
    out = tmp_path / "again"
    shutil.copytree(serial, out)
    unit = spec.units()[0]
    before = {p.name for p in unit_folder(out, unit).iterdir()}
    assert {"report.json", "report.md", "vector.safetensors"} <= before
    model, tokenizer = load_model(spec.models[0])
    status = execute_unit(model, tokenizer, replace(spec, run=replace(RUN, n_test=10**6)), unit, out)
    assert status.status == "failed" and status.error is not None
    assert {p.name for p in unit_folder(out, unit).iterdir()} == {"unit.json", "error.json", ".steerlab-cache"}


def test_a_killed_suite_resumes_without_recomputing_finished_units(suite: tuple[SuiteSpec, Path],
                                                                    tmp_path: Path) -> None:
    spec, serial = suite
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "steerlab.cli", "suite", "--tasks", ",".join(spec.tasks), "--models",
               spec.models[0], "--methods", "caa", "--seeds", "2", "--layers", "0,1", "--strengths", "0.5,2",
               "--n-train", "12", "--n-val", "6", "--n-test", "10", "--random-directions", "4", "--icl-k", "1",
               "--scoring", "letters", "--out", str(out), "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = unit_folder(out, spec.units()[0]) / "report.json"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # as hard as a lost machine: no handler runs
    process.wait()
    assert first.exists(), process.stderr.read().decode() if process.stderr else ""
    assert not (out / SUITE_JSON).exists()
    kept = first.stat().st_mtime_ns
    seen: list[tuple[int, int]] = []
    run_suite(spec, out, progress=lambda done, total, what: seen.append((done, total)))
    assert first.stat().st_mtime_ns == kept  # not recomputed, not rewritten
    assert seen[0][0] >= 1 and seen[-1] == (6, 6)  # the finished unit counted as done from the start
    # The resumed suite's aggregate is the uninterrupted one's, byte for byte.
    assert (out / SUITE_JSON).read_bytes() == (serial / SUITE_JSON).read_bytes()
    assert (out / SUITE_MD).read_bytes() == (serial / SUITE_MD).read_bytes()


def test_the_spec_file_gives_the_grid_and_names_what_is_wrong(tmp_path: Path) -> None:
    write_items(tmp_path / "mine.jsonl", 20, 0)
    path = tmp_path / "suite.yaml"
    path.write_text("tasks: [caa/refusal, mine.jsonl]\nmethods: [caa, ipas-wo]\nseeds: 3\ndtype: bf16\n"
                    "run: {n_test: 16, layers: [3, 5], strengths: [0.5]}\n")
    spec = load_spec(path)
    assert spec.tasks == ("caa/refusal", str(tmp_path / "mine.jsonl"))  # a relative file is the spec's neighbour
    assert spec.seeds == (0, 1, 2) and spec.dtype == "bf16" and len(spec.units()) == 12
    assert spec.units()[5] == Unit("embedded", "caa/refusal", "ipas-wo", 2)
    config = spec.config(spec.units()[5])
    assert (config.task, config.methods, config.seed, config.seeds) == ("caa/refusal", ("ipas-wo",), 2, 1)
    assert (config.n_test, config.layers, config.strengths) == (16, (3, 5), (0.5,))

    cases = {
        "tasks: [a]\nrun: {n_tset: 3}\n": "field 'run.n_tset': unknown setting(s) ['n_tset']",
        "tasks: [a]\nseeds: -1\n": "field 'seeds': expected a count of seeds or a list of integers, got -1",
        "tasks: [a]\nmethods: [magic]\n": "unknown method(s) ['magic']",
        "methods: [caa]\n": "field 'tasks': the suite needs its tasks",
        "tasks: [caa/refusal, caa_refusal]\n": "the suite's tasks 'caa/refusal' and 'caa_refusal' would share the unit "
                                               "folder 'caa_refusal'",
        "tasks: [a\nseeds: 2\n": f"{path}:2: not valid YAML",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(DataError) as info:
            load_spec(path)
        assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_an_unreachable_ray_address_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"  # closed again: nothing listens there
    code = main(["suite", "--tasks", "caa/refusal", "--address", address, "--out", str(tmp_path), "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"steerlab suite: error: cannot reach the Ray cluster at {address}: ")
    assert not (tmp_path / "units").exists()
    # The server's replicas join Ray the same way.
    code = main(["serve", "--vectors", str(tmp_path), "--address", address, "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [lines[0]]
    assert lines[0].startswith(f"steerlab serve: error: cannot reach the Ray cluster at {address}: ")


def test_retention_flags_reach_every_unit_and_the_cells_pool_it(suite: tuple[SuiteSpec, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec, _ = suite
    out = tmp_path / "retained"
    assert main(["suite", "--tasks", spec.tasks[0], "--models", spec.models[0], "--methods", "caa", "--seeds", "2",
                 "--layers", "0,1", "--strengths", "0.5,2", "--n-train", "12", "--n-val", "6", "--n-test", "10",
                 "--random-directions", "4", "--icl-k", "1", "--scoring", "letters", "--positions", "last_prompt",
                 "--retain", "copa:6", "--out", str(out), "-q"]) == 0
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("units/*/*/*/report.json"))]
    assert len(reports) == 2
    assert all((r["config"]["retain"], r["config"]["retain_n"], r["config"]["positions"]) ==
               ("copa", 6, ["last_prompt"]) for r in reports)
    # The cell pools the units' per-item retention differences and averages their KL, read straight from the
    # units' own reports.
    per_unit = [[s - b for s, b in zip(r["retention"]["per_item"]["steered"], r["retention"]["per_item"]["baseline"],
                                       strict=True)] for r in reports]
    assert [len(d) for d in per_unit] == [6, 6]
    (cell,) = json.loads((out / SUITE_JSON).read_text())["cells"]
    assert cell["retention"]["value"] == pytest.approx(sum(map(sum, per_unit)) / 12)
    assert cell["retention"]["low"] <= cell["retention"]["value"] <= cell["retention"]["high"]
    kls = [r["retention"]["coherence"]["kl"]["value"] for r in reports]
    assert cell["retention_kl"] == pytest.approx(sum(kls) / 2) and min(kls) >= 0
    assert "## Retention: what the chosen steering costs on copa" in (out / SUITE_MD).read_text()
    assert "retention " in capsys.readouterr().out
