"""One unit of a suite: a ``steerlab run`` in its own folder, its failure recorded there instead of raised.

The same function runs a unit in the serial loop and inside a Ray worker, so the two write the same files. A unit's
folder holds ``unit.json`` (what it is, with its key), then ``report.json`` (+ the other report files and
``vector.safetensors``) when it succeeds or ``error.json`` when it fails; the run's store in ``.steerlab-cache``
keeps its finished pieces, so a unit cut short resumes inside the run too.

Example::

    from steerlab import load_model
    from steerlab.suite.spec import SuiteSpec
    from steerlab.suite.unit import execute_unit
    spec = SuiteSpec(tasks=("caa/refusal",))
    model, tok = load_model()
    status = execute_unit(model, tok, spec, spec.units()[0], "suite-out")
"""

from __future__ import annotations

import json
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.vector import atomic_output
from steerlab.data.items import MCItem, load_items
from steerlab.data.tasks import TASK_NAMES, load_task
from steerlab.experiment.report import REPORT_JSON, write_report
from steerlab.experiment.runner import run_task
from steerlab.models.loading import load_model
from steerlab.suite.spec import EMBEDDED, SuiteSpec, Unit

UNIT_JSON = "unit.json"
ERROR_JSON = "error.json"
VECTOR_FILE = "vector.safetensors"

Status = Literal["done", "failed"]


@dataclass(frozen=True)
class UnitStatus:
    """How a unit ended: ``done`` (report.json written) or ``failed`` (``error`` says why)."""

    unit: Unit
    status: Status
    error: str | None = None


def unit_folder(out: str | Path, unit: Unit) -> Path:
    return Path(out) / "units" / unit.folder


def is_finished(out: str | Path, spec: SuiteSpec, unit: Unit) -> bool:
    """Whether the unit's report is there and was made by these very settings (then it is not run again)."""
    folder = unit_folder(out, unit)
    try:
        recorded = json.loads((folder / UNIT_JSON).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return (folder / REPORT_JSON).is_file() and recorded.get("key") == spec.unit_key(unit)


def load_unit_model(spec: SuiteSpec, model: str) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The model of a suite's units, on the suite's device and dtype."""
    return load_model(None if model == EMBEDDED else model, dtype=spec.dtype, device=spec.device,
                      device_map=spec.device_map)


def task_items(task: str) -> list[MCItem]:
    """A built-in task by name, else a data file or an ``hf:`` dataset (as ``steerlab run --task`` reads them)."""
    if task in TASK_NAMES or not (Path(task).is_file() or task.startswith("hf:")):
        return load_task(task)  # an unknown name gets load_task's error, which lists the built-in tasks
    return load_items(task)


def failure(exc: BaseException) -> str:
    """One line for the aggregate: the error's type and message (a steerlab error's message names the culprit)."""
    lines = traceback.format_exception_only(type(exc), exc)
    return " ".join(line.strip() for line in lines if line.strip())


def execute_unit(model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: SuiteSpec, unit: Unit,
                 out: str | Path) -> UnitStatus:
    """Run ``unit`` with an already loaded model and write its folder; any exception is recorded, not raised.

    Out of memory, bad data and a method that cannot run on the task all end the same way: ``error.json`` with
    the message, and the suite carries on with the other units.
    """
    folder = unit_folder(out, unit)
    folder.mkdir(parents=True, exist_ok=True)
    # Files left by other settings (report, error, vector, plots) must not stand for this run's outcome; the run's
    # store, a folder, stays: its keys decide what it may reuse.
    for stale in folder.iterdir():
        if stale.is_file():
            stale.unlink()
    _write_json(folder / UNIT_JSON, {"unit": asdict(unit), "key": spec.unit_key(unit)})
    try:
        result = run_task(model, tokenizer, task_items(unit.task), spec.config(unit), out_dir=folder)
        result.vectors[unit.method].save(folder / VECTOR_FILE)
        write_report(result.report.to_dict(), folder)
    except Exception as exc:  # recorded in the aggregate with its message; the other units go on
        message = failure(exc)
        _write_json(folder / ERROR_JSON, {"unit": asdict(unit), "error": message})
        return UnitStatus(unit, "failed", message)
    return UnitStatus(unit, "done")


def record_failure(out: str | Path, unit: Unit, message: str) -> UnitStatus:
    """Write the error of a unit that could not run at all (its model did not load, its worker kept dying)."""
    folder = unit_folder(out, unit)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / ERROR_JSON, {"unit": asdict(unit), "error": message})
    return UnitStatus(unit, "failed", message)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", "utf-8")
