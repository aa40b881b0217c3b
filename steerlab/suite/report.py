"""The suite's report files: suite.json (the data), suite.md and suite_effects.png, rendered from that data only.

Example::

    from steerlab.suite.aggregate import aggregate
    from steerlab.suite.report import write_suite_report
    write_suite_report(aggregate(spec, "suite-out").to_dict(), "suite-out")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steerlab.experiment.plots import finite, png
from steerlab.experiment.report import write_together
from steerlab.suite.figure import SUITE_PNG, plot_suite

SUITE_JSON = "suite.json"
SUITE_MD = "suite.md"


def write_suite_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write suite.json, suite.md and the figure; every file appears only once all are rendered."""
    outputs = {
        SUITE_JSON: (json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"),
        SUITE_MD: render_suite_markdown(report).encode("utf-8"),
        SUITE_PNG: png(plot_suite(report)),
    }
    return write_together(outputs, out_dir)


def _signed(value: Any) -> str:
    x = finite(value)
    return "n/a" if x is None else f"{0.0 if round(x, 3) == 0 else x:+.3f}"


def _estimate(estimate: dict[str, Any] | None) -> str:
    if not estimate:
        return "n/a"
    interval = "" if estimate.get("low") is None else f" [{_signed(estimate['low'])}, {_signed(estimate['high'])}]"
    return _signed(estimate.get("value")) + interval


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_suite_markdown(report: dict[str, Any]) -> str:
    parts = ["# steerlab suite",
             f"{report['units_done']} of {report['units_total']} units done, {report['units_failed']} failed. "
             f"Intervals: {report['ci_method']}.",
             "## Per task and method"]
    parts.append(_table(
        ["model", "task", "method", "seeds", "test unsteered", "test steered", "delta [95% CI]",
         "directional gain [95% CI]", "verdict"],
        [[c["model"], c["task"], c["method"], ",".join(map(str, c["seeds"])), f"{c['test_baseline']:.3f}",
          f"{c['test_steered']:.3f}", _estimate(c["delta"]), _estimate(c["directional_gain"]), c["verdict"]]
         for c in report["cells"]]))
    retained = [c for c in report["cells"] if c.get("retention")]
    if retained:
        tasks = sorted({u["retention_task"] for u in report["units"] if u.get("retention_task")})
        parts += ["## Retention: what the chosen steering costs on " + ", ".join(tasks),
                  _table(["model", "task", "method", "delta on the retention task [95% CI]", "KL nats/token"],
                         [[c["model"], c["task"], c["method"], _estimate(c["retention"]),
                           f"{c['retention_kl']:.4f}"] for c in retained])]
    parts.append(f"![Mean test delta per task and method]({SUITE_PNG})")
    parts.append("## Units")
    rows = []
    for u in report["units"]:
        unit = u["unit"]
        point = "" if u["layer"] is None else f"layer {u['layer']}, strength {u['strength']:g}, {u['positions']}"
        rows.append([unit["model"], unit["task"], unit["method"], str(unit["seed"]), u["outcome"], point,
                     _estimate(u["delta"]), u["verdict"] or "", u["error"] or ""])
    parts.append(_table(["model", "task", "method", "seed", "outcome", "chosen point", "delta [95% CI]", "verdict",
                         "error"], rows))
    return "\n\n".join(parts) + "\n"
