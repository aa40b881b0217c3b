"""The README's Figure-1 table: per task, each method's test delta and directional gain with 95% intervals,
and what the chosen vector costs on MMLU, from the ``steerlab run --method all --retain`` reports that
``benchmarks/figure1.sh`` writes; also OUT/figure1.md and OUT/figure1.png.

    python benchmarks/figure1_table.py runs/figure1 bbq/religion caa/refusal ...

Every number is printed whatever it says. Verdict tags: D directional (beats random directions of its norm),
d disruption only (accuracy rose, no more than random directions raised it), - no change, H harmful.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from steerlab.data.tasks import task_info
from steerlab.experiment.plots import png
from steerlab.methods.pas import PAS_METHODS

TAGS = {"directional": "D", "disruption only": "d", "no change": "-", "harmful": "H"}


def _estimate(e: dict[str, Any], digits: int = 3) -> str:
    low, high = e.get("low"), e.get("high")
    interval = "" if low is None or high is None else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{e['value']:+.{digits}f}{interval}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def tables(reports: dict[str, dict[str, Any]]) -> str:
    effect, gains = [], []
    for task, r in reports.items():
        methods = r["methods"]
        seeds = len(next(iter(methods.values()))["per_seed"])
        n = r["config"]
        split = f"{n['n_train']}/{n['n_val']}/{n['n_test']} x {seeds}"
        baseline = next(iter(methods.values()))["test_accuracy"]["baseline"]
        head = [task, task_info(task).kind, split, r["scoring"], f"{baseline:.3f}"]
        effect.append(head + [f"{_estimate(methods[m]['delta'])} {TAGS[methods[m]['verdict']]}"
                              if m in methods else "skipped" for m in PAS_METHODS])
        ret = r["retention"]
        coherence = ret["coherence"]
        gains.append([task] + [_estimate(methods[m]["directional_gain"]) if m in methods else "skipped"
                               for m in PAS_METHODS]
                     + [f"{r['method']} (layer {r['layer']}, {r['strength']:g})",
                        f"{ret['accuracy']['unsteered']:.3f} -> {ret['accuracy']['steered']:.3f}, "
                        f"{_estimate(ret['delta'])}", _estimate(coherence["kl"]),
                        f"{coherence['perplexity_unsteered']:.2f} -> {coherence['perplexity_steered']:.2f}"])
    first = _table(["task", "kind", "train/val/test x seeds", "scoring", "unsteered", *PAS_METHODS], effect)
    second = _table(["task", *(f"{m} gain" for m in PAS_METHODS), "chosen (seed 0)",
                     "MMLU: unsteered -> steered, delta", "KL nats/token", "perplexity"], gains)
    return (f"Test delta (steered - unsteered) [95% CI], verdict tag:\n\n{first}\n\n"
            "Directional gain (steered - mean of random directions of the same norm) [95% CI], and what the "
            f"chosen vector costs:\n\n{second}\n")


def figure(reports: dict[str, dict[str, Any]]) -> Figure:
    tasks = list(reports)
    fig = Figure(figsize=(1.2 * len(tasks) + 3, 6.5))
    top, bottom = fig.subplots(2, 1)
    width = 0.8 / len(PAS_METHODS)
    for ax, key, label in ((top, "delta", "test delta"), (bottom, "directional_gain", "directional gain")):
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        for k, method in enumerate(PAS_METHODS):
            points = [(t, reports[task]["methods"][method][key]) for t, task in enumerate(tasks)
                      if method in reports[task]["methods"]]
            xs = [t - 0.4 + width * (k + 0.5) for t, _ in points]
            ys = [e["value"] for _, e in points]
            errors = [[e["value"] - e["low"] for _, e in points], [e["high"] - e["value"] for _, e in points]]
            ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, label=method)
        ax.set_xticks(range(len(tasks)), tasks, rotation=25, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, ncol=len(PAS_METHODS))
    fig.suptitle("PAS methods, embedded model: 95% intervals over seeds and items", fontsize=10)
    fig.tight_layout()
    return fig


def main() -> None:
    out, tasks = Path(sys.argv[1]), sys.argv[2:]
    reports = {}
    for task in tasks:
        path = out / task.replace("/", "_") / "report.json"
        if path.is_file():
            reports[task] = json.loads(path.read_text())
        else:
            print(f"{task}: no report at {path}")
    text = tables(reports)
    print(text)
    (out / "figure1.md").write_text(text)
    (out / "figure1.png").write_bytes(png(figure(reports)))
    print(f"wrote {out}/figure1.md and figure1.png")


if __name__ == "__main__":
    main()
