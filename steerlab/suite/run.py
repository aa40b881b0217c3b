"""``steerlab suite``: run every unit of a suite that is not finished yet, serially or on Ray, then aggregate.

Finished units (their report made by the same settings) are skipped, so a killed suite started again resumes; a
unit cut short resumes inside its own run from its store. ``workers=1`` without an address runs in this process
without Ray; the aggregate is read from the units' folders either way, so both give the same bytes.

Example::

    from steerlab.experiment.config import RunConfig
    from steerlab.suite.run import run_suite
    from steerlab.suite.spec import SuiteSpec
    spec = SuiteSpec(tasks=("caa/refusal", "caa/myopic-reward"), seeds=(0, 1), run=RunConfig(n_test=32))
    report = run_suite(spec, "suite-out", workers=2)
    for cell in report.cells:
        print(cell.task, cell.method, cell.delta, cell.verdict)
"""

from __future__ import annotations

from dataclasses import replace
from itertools import groupby
from pathlib import Path

from steerlab.errors import ConfigError
from steerlab.progress import Progress, silent
from steerlab.suite.aggregate import SuiteReport, aggregate
from steerlab.suite.report import write_suite_report
from steerlab.suite.spec import SuiteSpec
from steerlab.suite.unit import UnitStatus, is_finished
from steerlab.suite.worker import ModelWorker

WHAT = "suite: units"


def on_gpus(spec: SuiteSpec, gpus_per_worker: float) -> SuiteSpec:
    """A suite whose workers get GPUs runs on them: one GPU is ``cuda``, several are spread by ``device_map``."""
    if gpus_per_worker <= 0 or spec.device is not None or spec.device_map is not None:
        return spec
    return replace(spec, device="cuda") if gpus_per_worker <= 1 else replace(spec, device_map="auto")


def run_suite(spec: SuiteSpec, out_dir: str | Path, *, workers: int = 1, address: str | None = None,
              cpus_per_worker: int = 1, gpus_per_worker: float = 0, progress: Progress = silent) -> SuiteReport:
    """Run the suite's unfinished units into ``out_dir/units/`` and write suite.json, suite.md and the figure.

    ``progress(done, total, ...)`` counts units, finished ones included. A unit that fails is recorded with its
    error in the aggregate; the others run on.
    """
    if workers < 1 or cpus_per_worker < 1 or gpus_per_worker < 0:
        raise ConfigError(f"workers ({workers}) and cpus per worker ({cpus_per_worker}) must be at least 1, gpus "
                          f"per worker ({gpus_per_worker}) at least 0")
    spec = on_gpus(spec, gpus_per_worker)
    out = Path(out_dir)
    units = spec.units()
    todo = [unit for unit in units if not is_finished(out, spec, unit)]
    done = len(units) - len(todo)
    progress(done, len(units), WHAT)

    def finished(status: UnitStatus) -> None:
        nonlocal done
        done += 1
        progress(done, len(units), WHAT)

    if workers == 1 and address is None:
        for model, group in groupby(todo, key=lambda u: u.model):
            worker = ModelWorker(spec, model, str(out))
            for unit in group:
                finished(worker.run(unit))
            del worker  # one model in memory at a time
    elif todo:
        from steerlab.suite.ray_pool import run_on_ray

        run_on_ray(spec, out, todo, workers=workers, on_done=finished, address=address,
                   cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    report = aggregate(spec, out)
    write_suite_report(report.to_dict(), out)
    return report
