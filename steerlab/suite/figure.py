"""The suite's figure, as in the PAS paper's Figure 1: per task, each method's mean test delta with its 95% interval,
one panel per model, drawn from the aggregate's data (``SuiteReport.to_dict()``) only.

Example::

    from steerlab.experiment.plots import png
    from steerlab.suite.figure import plot_suite
    data = png(plot_suite(report.to_dict()))  # deterministic PNG bytes
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from steerlab.experiment.plots import finite

SUITE_PNG = "suite_effects.png"


def plot_suite(report: dict[str, Any]) -> Figure:
    cells = report["cells"]
    models = list(dict.fromkeys(u["unit"]["model"] for u in report["units"]))
    tasks = list(dict.fromkeys(u["unit"]["task"] for u in report["units"]))
    methods = list(dict.fromkeys(u["unit"]["method"] for u in report["units"]))
    fig = Figure(figsize=(max(5.0, 1.4 * len(tasks) + 2.5), 3.2 * len(models)))
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    width = 0.8 / len(methods)
    for ax, model in zip(axes, models, strict=True):
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        for k, method in enumerate(methods):
            xs, ys, lows, highs = [], [], [], []
            for t, task in enumerate(tasks):
                found = [c for c in cells if (c["model"], c["task"], c["method"]) == (model, task, method)]
                value = finite(found[0]["delta"]["value"]) if found else None
                if value is None:
                    continue
                low = finite(found[0]["delta"]["low"])
                high = finite(found[0]["delta"]["high"])
                xs.append(t - 0.4 + width * (k + 0.5))
                ys.append(value)
                lows.append(value - (low if low is not None else value))
                highs.append((high if high is not None else value) - value)
            ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o", capsize=3, label=method)
        ax.set_xticks(range(len(tasks)), [task.rsplit("/", 1)[-1] for task in tasks], rotation=20, ha="right",
                      fontsize=8)
        ax.set_xlim(-0.6, len(tasks) - 0.4)
        ax.set_ylabel("test delta (steered - unsteered)")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Mean test delta per task and method, 95% intervals over seeds and items", fontsize=10)
    fig.tight_layout()
    return fig
