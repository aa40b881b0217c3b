"""The report's figures, drawn from report.json's data: what people would rather see than read.

- ``val_gain.png``: directional gain on validation ((acc(+s) - acc(-s)) / 2) per layer x strength, per positions;
- ``val_vs_strength.png``: validation accuracy against the signed strength at the chosen layer and positions
  (a direction rises on one side only; a disruption rises on both);
- ``test_effects.png``: per method, the test delta of the vector, its negation and the mean random direction with
  95% intervals, and the delta of each random direction as a dot.
"""

from __future__ import annotations

import io
import math
import numbers
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

GAIN_PNG = "val_gain.png"
STRENGTH_PNG = "val_vs_strength.png"
EFFECTS_PNG = "test_effects.png"
_DPI = 100


def png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No Software tag: the bytes then depend on the drawing only, not on the matplotlib version.
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def finite(value: Any) -> float | None:
    """A finite float, or None for a missing or non-finite value (report values may be either)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _title(report: dict[str, Any], what: str) -> str:
    return f"{what}\n{report.get('task')} · {report.get('model')} · {report.get('method')}"


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _sweep(report: dict[str, Any]) -> list[dict[str, Any]]:
    method = (report.get("methods") or {}).get(report.get("method")) or {}
    rows: list[dict[str, Any]] = method.get("sweep") or []
    return rows


def plot_gain(report: dict[str, Any]) -> Figure:
    rows = _sweep(report)
    grid = report.get("grid") or {}
    positions = list(grid.get("positions") or sorted({r["positions"] for r in rows}))
    layers = list(grid.get("layers") or sorted({r["layer"] for r in rows}))
    strengths = list(grid.get("strengths") or sorted({r["strength"] for r in rows}))
    panels = max(1, len(positions))
    fig = Figure(figsize=(min(18.0, 1.0 + panels * max(4.5, 0.8 * len(strengths) + 2.0)),
                          min(12.0, max(4.5, 0.45 * len(layers) + 2.5))), layout="constrained")
    fig.suptitle(_title(report, "Validation directional gain (acc(+s) - acc(-s)) / 2; red box: chosen"), fontsize=10)
    if not rows:
        _no_data(fig.add_subplot(), "no validation sweep")
        return fig
    cells = {(r["positions"], r["layer"], r["strength"]): r["gain"] for r in rows}
    bound = max(0.05, max(abs(v) for v in cells.values()))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    image = None
    for ax, where in zip(axes, positions, strict=True):
        data = [[cells.get((where, layer, s), math.nan) for s in strengths] for layer in layers]
        image = ax.imshow(data, cmap="RdBu", aspect="auto", origin="lower", vmin=-bound, vmax=bound)
        ax.set_xticks(range(len(strengths)), labels=[f"{s:g}" for s in strengths])
        ax.set_yticks(range(len(layers)), labels=[str(layer) for layer in layers])
        ax.set_xlabel(f"strength ({report.get('unit')})")
        ax.set_ylabel("layer")
        ax.set_title(f"positions: {where}", fontsize=9)
        for i, layer in enumerate(layers):
            for j, s in enumerate(strengths):
                value = cells.get((where, layer, s))
                if value is not None:
                    ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(value) > 0.6 * bound else "black")
                if (where, layer, s) == (report.get("positions"), report.get("layer"), report.get("strength")):
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
                                           clip_on=False))
    if image is not None:
        fig.colorbar(image, ax=list(axes)).set_label("directional gain on validation")
    return fig


def plot_vs_strength(report: dict[str, Any]) -> Figure:
    layer, where = report.get("layer"), report.get("positions")
    rows = sorted((r for r in _sweep(report) if r["layer"] == layer and r["positions"] == where),
                  key=lambda r: r["strength"])
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(report, f"Validation accuracy vs signed strength, layer {layer}, positions {where}"),
                 fontsize=10)
    if not rows:
        _no_data(ax, "no validation sweep at the chosen point")
        return fig
    xs = [-r["strength"] for r in reversed(rows)] + [r["strength"] for r in rows]
    ys = [r["negated_val_accuracy"] for r in reversed(rows)] + [r["val_accuracy"] for r in rows]
    ax.plot(xs, ys, marker="o", color="C0", label="vector x strength")
    strength = finite(report.get("strength"))
    if strength is not None and strength in xs:
        ax.plot([strength], [ys[xs.index(strength)]], marker="*", markersize=16, color="C3", linestyle="none",
                label="chosen")
    per_seed = (report.get("methods") or {}).get(report.get("method"), {}).get("per_seed") or []
    baseline = finite(per_seed[0].get("val_baseline")) if per_seed else None
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"unsteered ({baseline:.3f})")
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel(f"strength ({report.get('unit')}); negative = the negated vector")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return fig


def plot_effects(report: dict[str, Any]) -> Figure:
    methods = {name: m for name, m in (report.get("methods") or {}).items()}
    arms = [("delta", "vector", "C3"), ("negated_delta", "negated", "C0"), ("random_delta", "random (mean)", "C7")]
    fig = Figure(figsize=(max(7.0, 2.6 * len(methods) + 2.5), 5.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(report, "Test accuracy delta vs unsteered (95% bootstrap CI); dots: each random direction"),
                 fontsize=10)
    if not methods:
        _no_data(ax, "no test results")
        return fig
    labelled: set[str] = set()
    for x, m in enumerate(methods.values()):
        for k, (key, label, color) in enumerate(arms):
            estimate = m.get(key) or {}
            value, low, high = finite(estimate.get("value")), finite(estimate.get("low")), finite(estimate.get("high"))
            if value is None:
                continue
            offset = x + (k - 1) * 0.22
            yerr = None if low is None or high is None else [[max(0.0, value - low)], [max(0.0, high - value)]]
            ax.errorbar([offset], [value], yerr=yerr, fmt="o", color=color, capsize=4, markersize=7,
                        label=None if label in labelled else label)
            labelled.add(label)
        base = finite((m.get("test_accuracy") or {}).get("baseline"))
        draws = [a - base for a in m.get("random_accuracies") or [] if base is not None]
        ax.plot([x + 0.22 + 0.08] * len(draws), draws, marker=".", linestyle="none", color="C7", alpha=0.6)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(methods)), labels=[f"{n}\n({m.get('verdict')})" for n, m in methods.items()],
                  fontsize=9)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel("test accuracy delta")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return fig
