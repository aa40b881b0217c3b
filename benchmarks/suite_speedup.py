"""Suite speed-up on Ray: 4 units on the embedded model, 1 and 2 workers of 1 thread each, Ray's overhead.

Issue 14's benchmark. The same suite (2 tasks x 2 seeds; ``--units`` sets their size) runs three times into
fresh folders: serially in this process (1 torch thread, no Ray), on a local Ray with 1 worker, and with 2
workers (each a model replica with 1 CPU and 1 torch thread). It prints the wall times, the speed-up of 2
workers over 1 (target 1.8x on 2 cores), and the Ray overhead per unit: (1 Ray worker - serial) / units, which
holds Ray's start, the worker process start and its model load, spread over the units. The three aggregates
must be the same bytes.

    . .venv/bin/activate && cd benchmarks && python suite_speedup.py [--units run|full]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from steerlab.experiment.config import RunConfig
from steerlab.models import default_model_path
from steerlab.suite.report import SUITE_JSON
from steerlab.suite.run import run_suite
from steerlab.suite.spec import SuiteSpec

from common import load_line, setup, table, timed

TASKS = ("caa/refusal", "caa/myopic-reward")
# Unit sizes. "small": a smoke-sized unit (2 layers x 2 strengths, 16/8/16 items, 4 random directions), about
# 25 s on one thread, so the suite's fixed start and end (Ray, worker processes, model loads, the aggregate:
# about 9 s whatever the workers) weigh on the speed-up. "run": shaped like a `steerlab run` unit (its 8
# layers x 4 strengths, both signs) at half its default splits, 4 random directions, last_prompt: ~45 s.
# "full": a `steerlab run` unit at its default splits (64/32/64) and 16 random directions, last_prompt: ~90 s.
SIZES = {
    "small": RunConfig(methods=("caa",), layers=(10, 14), strengths=(0.5, 1.0), n_train=16, n_val=8,
                       n_test=16, random_directions=4, icl_k=2, scoring="letters"),
    "run": RunConfig(methods=("caa",), n_train=32, n_val=16, n_test=32, random_directions=4,
                     scoring="letters", positions=("last_prompt",)),
    "full": RunConfig(methods=("caa",), scoring="letters", positions=("last_prompt",)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per task (units = 2 tasks x seeds)")
    parser.add_argument("--units", choices=sorted(SIZES), default="small", help="unit size (see SIZES)")
    parser.add_argument("--out", help="keep the three suites' folders here (default: a temporary folder)")
    args = parser.parse_args()
    setup(threads=1)
    default_model_path()  # the one-time conversion of the embedded model is not part of any timing
    spec = SuiteSpec(tasks=TASKS, methods=("caa",), seeds=tuple(range(args.seeds)), run=SIZES[args.units])
    units = len(spec.units())
    print(load_line("before", 1))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        _, serial = timed(lambda: run_suite(spec, root / "serial"))
        _, one = timed(lambda: _ray(spec, root / "ray1", 1))
        _, two = timed(lambda: _ray(spec, root / "ray2", 2))
        names = ("serial", "ray1", "ray2")
        aggregates = {name: json.loads((root / name / SUITE_JSON).read_text()) for name in names}
        same = len({(root / name / SUITE_JSON).read_bytes() for name in aggregates}) == 1
        for name in ("ray1", "ray2"):
            for path, mine, theirs in _differences(aggregates[name], aggregates["serial"]):
                print(f"{name} differs from serial at {path}: {mine!r} vs {theirs!r}")
        work = {name: _unit_seconds(root / name) for name in names}
    print(load_line("after", 1))
    walls = {"serial": serial.wall, "ray1": one.wall, "ray2": two.wall}
    labels = {"serial": "serial (no Ray, 1 thread)", "ray1": "Ray, 1 worker x 1 CPU",
              "ray2": "Ray, 2 workers x 1 CPU"}
    print(table(["run", "wall s", "s per unit", "units' own s", "wall - units' own s"],
                [[labels[n], f"{walls[n]:.1f}", f"{walls[n] / units:.1f}", f"{work[n]:.1f}",
                  f"{walls[n] - work[n]:.1f}" if n != "ray2" else "(in parallel)"] for n in names]))
    # Outside the units' own work: model loads, and for Ray its start, worker processes and scheduling.
    overhead = ((one.wall - work["ray1"]) - (serial.wall - work["serial"])) / units
    verdict = "the same bytes" if same else "DIFFERENT"
    print(f"\n{units} units; speed-up of 2 workers over 1: {one.wall / two.wall:.2f}x (over serial: "
          f"{serial.wall / two.wall:.2f}x); Ray overhead per unit: {overhead:+.1f} s (wall minus the units' "
          f"own time, Ray 1 worker vs serial); the three aggregates are {verdict}")


def _unit_seconds(out: Path) -> float:
    """The units' own compute time, as each run's report records it (where the unit ran)."""
    reports = out.glob("units/*/*/*/report.json")
    return sum(json.loads(report.read_text())["timings"]["total"] for report in reports)


def _differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


def _ray(spec: SuiteSpec, out: Path, workers: int) -> None:
    run_suite(spec, out, workers=workers, cpus_per_worker=1)


if __name__ == "__main__":
    main()
