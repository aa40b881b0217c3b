"""A suite's aggregate, read from its units' folders: per (model, task, method) the mean test delta and directional
gain over the seeds with 95% intervals, each unit's outcome, and the failed units with their errors.

Only the units' files are read, never the process that ran them, so a serial suite and a Ray suite (or a resumed
one) give the same aggregate bytes. Timings are left out for that reason: they differ from run to run.

Example::

    from steerlab.suite.aggregate import aggregate
    from steerlab.suite.spec import SuiteSpec
    spec = SuiteSpec(tasks=("caa/refusal",), seeds=(0, 1))
    for cell in aggregate(spec, "suite-out").cells:
        print(cell.task, cell.method, cell.delta, cell.verdict)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from steerlab._version import __version__
from steerlab.experiment.report import REPORT_JSON
from steerlab.experiment.results import Verdict, verdict
from steerlab.experiment.stats import Estimate, mean, paired_bootstrap
from steerlab.suite.spec import SuiteSpec, Unit
from steerlab.suite.unit import ERROR_JSON, is_finished, unit_folder

Outcome = Literal["done", "failed", "missing"]


@dataclass(frozen=True)
class UnitResult:
    """One unit as its folder tells it. For a done unit, the per-item test differences of its single seed."""

    unit: Unit
    outcome: Outcome
    error: str | None = None
    verdict: str | None = None
    positions: str | None = None
    layer: int | None = None
    strength: float | None = None
    test_baseline: float | None = None
    test_steered: float | None = None
    delta: Estimate | None = None
    directional_gain: Estimate | None = None
    steered_minus_baseline: tuple[float, ...] = ()
    steered_minus_random: tuple[float, ...] = ()
    retention_task: str | None = None  # ``--retain``: the chosen steering on a task it was not selected on
    retention_minus_baseline: tuple[float, ...] = ()
    retention_kl: float | None = None  # nats per token on neutral requests


@dataclass(frozen=True)
class Cell:
    """One (model, task, method) over the seeds that finished: the paired two-level bootstrap of ``steerlab run``."""

    model: str
    task: str
    method: str
    seeds: tuple[int, ...]
    failed: int
    delta: Estimate
    directional_gain: Estimate
    verdict: Verdict
    test_baseline: float
    test_steered: float
    retention: Estimate | None = None  # pooled like ``delta``, when every finished seed measured retention
    retention_kl: float | None = None  # mean over the seeds


@dataclass(frozen=True)
class SuiteReport:
    steerlab_version: str
    units: list[UnitResult]
    cells: list[Cell]

    @property
    def failed(self) -> list[UnitResult]:
        return [u for u in self.units if u.outcome == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "steerlab_version": self.steerlab_version,
            "ci_method": "paired bootstrap over seeds and test items (percentile, 95%)",
            "units_total": len(self.units),
            "units_done": sum(u.outcome == "done" for u in self.units),
            "units_failed": len(self.failed),
            "cells": [{**asdict(c), "seeds": list(c.seeds)} for c in self.cells],
            "units": [_unit_dict(u) for u in self.units],
        }


def _unit_dict(result: UnitResult) -> dict[str, Any]:
    data = asdict(result)
    # Per-item differences live in the unit's own report; the aggregate keeps the summary.
    for bulky in ("steered_minus_baseline", "steered_minus_random", "retention_minus_baseline"):
        del data[bulky]
    return data


def _estimate(data: dict[str, Any]) -> Estimate:
    return Estimate(float(data["value"]), data.get("low"), data.get("high"))


def read_unit(spec: SuiteSpec, out: str | Path, unit: Unit) -> UnitResult:
    """The unit's outcome from its folder: its report, its recorded error, or nothing yet."""
    folder = unit_folder(out, unit)
    if (folder / ERROR_JSON).is_file():
        return UnitResult(unit, "failed", error=str(json.loads((folder / ERROR_JSON).read_text("utf-8"))["error"]))
    if not is_finished(out, spec, unit):
        return UnitResult(unit, "missing")
    report = json.loads((folder / REPORT_JSON).read_text("utf-8"))
    method = report["methods"][unit.method]
    seed = method["per_seed"][0]
    items = method["per_item"][0]
    retention = report.get("retention") or {}
    kept = retention.get("per_item", {})
    return UnitResult(
        unit, "done", verdict=method["verdict"], positions=seed["positions"], layer=seed["layer"],
        strength=seed["strength"], test_baseline=seed["test_baseline"], test_steered=seed["test_steered"],
        delta=_estimate(method["delta"]), directional_gain=_estimate(method["directional_gain"]),
        steered_minus_baseline=tuple(s - b for s, b in zip(items["steered"], items["baseline"], strict=True)),
        steered_minus_random=tuple(s - r for s, r in zip(items["steered"], items["random_mean"], strict=True)),
        retention_task=retention.get("task"),
        retention_minus_baseline=tuple(s - b for s, b in zip(kept.get("steered", ()), kept.get("baseline", ()),
                                                              strict=True)),
        retention_kl=retention["coherence"]["kl"]["value"] if retention else None)


def aggregate(spec: SuiteSpec, out: str | Path) -> SuiteReport:
    """Every unit's outcome and, per (model, task, method) with at least one finished seed, the pooled estimate."""
    units = [read_unit(spec, out, unit) for unit in spec.units()]
    cells = []
    for model in spec.models:
        for task in spec.tasks:
            for method in spec.methods:
                group = [u for u in units if (u.unit.model, u.unit.task, u.unit.method) == (model, task, method)]
                done = [u for u in group if u.outcome == "done"]
                if not done:
                    continue
                delta = paired_bootstrap([list(u.steered_minus_baseline) for u in done])
                gain = paired_bootstrap([list(u.steered_minus_random) for u in done])
                retained = all(u.retention_kl is not None for u in done)
                cells.append(Cell(model, task, method, tuple(u.unit.seed for u in done),
                                  sum(u.outcome == "failed" for u in group), delta, gain, verdict(delta, gain),
                                  mean([u.test_baseline or 0.0 for u in done]),
                                  mean([u.test_steered or 0.0 for u in done]),
                                  paired_bootstrap([list(u.retention_minus_baseline) for u in done])
                                  if retained else None,
                                  mean([u.retention_kl or 0.0 for u in done]) if retained else None))
    return SuiteReport(__version__, units, cells)
