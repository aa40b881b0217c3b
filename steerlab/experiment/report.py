"""The report of ``steerlab run``: data first (report.json), then views rendered from that data only.

Every view is a pure function of the report dict, so the same dict always gives byte-identical files:
report.json, report.md, four PNG plots, and the plain-text table the CLI prints at the end of a run.
"""

from __future__ import annotations

import io
import json
import math
import numbers
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from steerlab.core.vector import atomic_output
from steerlab.errors import ConfigError

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
HEATMAP_PNG = "val_heatmap.png"
STRENGTH_PNG = "val_vs_strength.png"
LAYER_PNG = "val_vs_layer.png"
DELTAS_PNG = "test_deltas.png"

_DPI = 100
# Known controls in the order they are shown; any other control follows in its report order.
_CONTROL_ORDER = ("random_direction", "icl", "icl_steering", "constant_letter", "shortest_answer")


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and the PNG plots into ``out_dir``; return their paths.

    Everything is rendered in memory before the first file is touched, and every file goes through a temporary
    that replaces its target only once all files are written, so a failure leaves no partial or temporary file
    and, short of a failing rename, the folder as it was.
    """
    outputs: dict[str, bytes] = {
        REPORT_JSON: _json_bytes(report),
        REPORT_MD: render_markdown(report).encode("utf-8"),
        HEATMAP_PNG: _png(_plot_heatmap(report)),
        STRENGTH_PNG: _png(_plot_vs_strength(report)),
        LAYER_PNG: _png(_plot_vs_layer(report)),
        DELTAS_PNG: _png(_plot_deltas(report)),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Contexts exit last-in first-out, so report.json (entered first) is the last file to appear.
    with ExitStack() as stack:
        for name, data in outputs.items():
            stack.enter_context(atomic_output(out / name)).write_bytes(data)
    return [out / name for name in outputs]


def _json_default(value: Any) -> Any:
    # numpy scalars are common in computed results; only float64 subclasses float, so convert the rest here.
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _json_bytes(report: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the report is not JSON-serialisable: {exc}") from None
    return (text + "\n").encode("utf-8")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No Software tag: the bytes then depend on the drawing only, not on the matplotlib version.
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _num(value: Any) -> float | None:
    """A finite float, or None for a missing or non-finite value."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _acc(value: Any) -> str:
    x = _num(value)
    return "n/a" if x is None else f"{x:.3f}"


def _signed(value: Any) -> str:
    x = _num(value)
    if x is None:
        return "n/a"
    # Tiny negatives would otherwise print as "-0.000".
    return f"{0.0 if round(x, 3) == 0 else x:+.3f}"


def _bounds(ci: Any) -> tuple[float, float] | None:
    if not isinstance(ci, list | tuple) or len(ci) != 2:
        return None
    lo, hi = _num(ci[0]), _num(ci[1])
    return None if lo is None or hi is None else (lo, hi)


def _ci(ci: Any) -> str:
    b = _bounds(ci)
    return "n/a" if b is None else f"[{_signed(b[0])}, {_signed(b[1])}]"


def _strength(value: Any) -> str:
    x = _num(value)
    return "n/a" if x is None else f"{x:g}"


def _plain(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return _acc(value)
    return str(value)


def _verdict(ci: Any, random: dict[str, Any] | None = None) -> str:
    b = _bounds(ci)
    if b is None:
        return "no 95% interval could be computed"
    if b[0] > 0:
        raised = "the 95% interval excludes 0: steering raised test accuracy"
        versus = (random or {}).get("steered_minus_random")
        vb = _bounds(versus.get("delta_ci95")) if versus else None
        if versus is None or vb is None:
            return raised
        gap = f"steered - random {_signed(versus['delta'])} {_ci(versus['delta_ci95'])}"
        if vb[0] > 0:
            return f"{raised}, and more than a random direction of the same norm did ({gap})"
        return (f"{raised}, but no more than a random direction of the same norm did ({gap}): the gain is not "
                f"specific to this direction")
    if b[1] < 0:
        return "the 95% interval excludes 0: steering lowered test accuracy"
    return "the 95% interval includes 0: no reliable change in test accuracy"


def _headline(report: dict[str, Any]) -> str:
    ci = _bounds(report.get("delta_ci95"))
    ci_text = "n/a" if ci is None else f"{_signed(ci[0])}, {_signed(ci[1])}"
    return (
        f"{report['method']} at layer {report.get('layer')}, strength {_strength(report.get('strength'))}: "
        f"test accuracy {_acc(report['baseline'].get('test_accuracy'))} -> "
        f"{_acc(report['steered'].get('test_accuracy'))}, delta {_signed(report.get('delta'))} "
        f"[95% CI {ci_text}]"
    )


def _humanize(key: str) -> str:
    return key.replace("_", " ")


def _methods(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    methods: dict[str, dict[str, Any]] = report.get("methods") or {}
    return methods


def _seeds(result: dict[str, Any]) -> list[dict[str, Any]]:
    per_seed: list[dict[str, Any]] = result.get("per_seed") or []
    return per_seed


def _control_label(name: str, control: dict[str, Any]) -> str:
    k = f" (k={control['k']})" if "k" in control else ""
    if name == "random_direction":
        return "random direction"
    if name == "icl":
        return f"ICL{k}"
    if name == "icl_steering":
        return f"ICL + steering{k}"
    if name == "constant_letter":
        letter = f" ({control['letter']})" if "letter" in control else ""
        return f"best constant letter{letter}"
    if name == "shortest_answer":
        return "always the shortest answer"
    return _humanize(name)


def _controls(controls: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(label, control) pairs in display order."""
    if not controls:
        return []
    names = [n for n in _CONTROL_ORDER if n in controls] + [n for n in controls if n not in _CONTROL_ORDER]
    return [(_control_label(n, controls[n]), controls[n]) for n in names]


def _control_cells(control: dict[str, Any]) -> list[str]:
    """test accuracy, delta and CI; a control without a delta (the constant letter) shows "-" there."""
    accuracy = control.get("test_accuracy", control.get("accuracy"))
    if "delta" not in control:
        return [_acc(accuracy), "-", "-"]
    return [_acc(accuracy), _signed(control["delta"]), _ci(control.get("delta_ci95"))]


def _control_rows(report: dict[str, Any]) -> list[list[str]]:
    """Rows of label, test accuracy, delta, CI: the unsteered and steered references, then the controls."""
    rows = [
        ["unsteered", _acc(report["baseline"].get("test_accuracy")), "-", "-"],
        [f"steered ({report['method']})", _acc(report["steered"].get("test_accuracy")),
         _signed(report.get("delta")), _ci(report.get("delta_ci95"))],
    ]
    rows += [[label, *_control_cells(c)] for label, c in _controls(report.get("controls"))]
    return rows


def _method_cells(result: dict[str, Any]) -> list[str]:
    return [
        _plain(result.get("layer")),
        _strength(result.get("strength")),
        _acc(result.get("val_accuracy")),
        _acc(result.get("baseline_test_accuracy")),
        _acc(result.get("steered_test_accuracy")),
        _signed(result.get("delta")),
        _ci(result.get("delta_ci95")),
    ]


_METHOD_HEADERS = ["layer", "strength", "val acc", "test baseline", "test steered", "delta", "95% CI"]


def _sweep_table(report: dict[str, Any]) -> tuple[list[Any], list[Any], dict[tuple[Any, Any], float]]:
    """(layers, strengths, {(layer, strength): validation accuracy}) of the chosen method's sweep."""
    cells: dict[tuple[Any, Any], float] = {}
    for row in report.get("sweep") or []:
        acc = _num(row.get("val_accuracy"))
        if acc is not None:
            cells[(row["layer"], row["strength"])] = acc
    grid = report.get("grid") or {}
    layers = list(grid.get("layers") or sorted({layer for layer, _ in cells}))
    strengths = list(grid.get("strengths") or sorted({s for _, s in cells}))
    return layers, strengths, cells


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: Iterable[list[str]], left: int = 1) -> str:
    """A markdown table whose first ``left`` columns are left-aligned and the rest right-aligned (numbers)."""
    aligns = [":---" if i < left else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report.md."""
    method = report["method"]
    parts = [f"# steerlab report: {report.get('task')}", _headline(report) + "."]

    verdict = _verdict(report.get("delta_ci95"), (report.get("controls") or {}).get("random_direction"))
    n_test = f"{report['n_test']} test items" if "n_test" in report else None
    basis = ", ".join(x for x in (report.get("ci_method"), n_test) if x)
    parts.append(verdict[0].upper() + verdict[1:] + (f" ({basis})." if basis else "."))

    seeds = report.get("seeds")
    setup = [
        f"- Model: `{report.get('model')}`",
        f"- Task: `{report.get('task')}`",
        f"- Methods run: {', '.join(report.get('methods_run') or _methods(report))}; "
        f"chosen by validation accuracy: **{method}**",
        f"- Scoring: {report.get('scoring')}; steering positions: {report.get('steer_positions')}",
        f"- Items: {report.get('n_train')} train, {report.get('n_val')} validation, "
        f"{report.get('n_test')} test",
        f"- Seeds: {seeds}" + (f" (seed {report['seed']})" if "seed" in report else ""),
        f"- steerlab {report.get('steerlab_version')}",
    ]
    parts += ["## Setup", "\n".join(setup)]

    methods = _methods(report)
    ran = {name: r for name, r in methods.items() if "skipped" not in r}
    skipped = {name: r["skipped"] for name, r in methods.items() if "skipped" in r}
    parts.append("## Methods")
    if ran:
        rows = [[f"**{name}** (chosen)" if name == method else name, *_method_cells(r)]
                for name, r in ran.items()]
        parts.append(_md_table(["method", *_METHOD_HEADERS], rows))
    if skipped:
        parts.append("Skipped: " + "; ".join(f"{name} ({reason})" for name, reason in skipped.items()) + ".")

    if any(len(_seeds(r)) > 1 for r in ran.values()):
        rows = [
            [name, _plain(s.get("seed")), _plain(s.get("layer")), _strength(s.get("strength")),
             _acc(s.get("baseline_test_accuracy")), _acc(s.get("steered_test_accuracy")),
             _signed(s.get("delta")), _ci(s.get("delta_ci95"))]
            for name, r in ran.items()
            for s in _seeds(r)
        ]
        headers = ["method", "seed", "layer", "strength", "test baseline", "test steered", "delta", "95% CI"]
        parts += ["### Per seed", _md_table(headers, rows)]

    parts += [f"## Controls ({method})",
              _md_table(["", "test accuracy", "delta", "95% CI"], _control_rows(report))]
    with_controls = {name: r["controls"] for name, r in ran.items() if r.get("controls")}
    if len(with_controls) > 1:
        rows = [[name, label, *_control_cells(c)]
                for name, cs in with_controls.items()
                for label, c in _controls(cs)]
        parts += ["### Controls per method",
                  _md_table(["method", "control", "test accuracy", "delta", "95% CI"], rows, left=2)]

    parts += ["## Scoring", _scoring_section(report)]
    letters = _letters_section(report)
    if letters:
        parts += ["## Letters", letters]
    parts += ["## Validation sweep", _sweep_section(report)]
    parts += ["## Test deltas", f"![Test accuracy delta per method and control]({DELTAS_PNG})"]

    timings = report.get("timings") or {}
    if timings:
        rows = [[_humanize(k), f"{v:.1f}" if _num(v) is not None else _plain(v)] for k, v in timings.items()]
        parts += ["## Timings", _md_table(["phase", "seconds"], rows)]
    return "\n\n".join(parts) + "\n"


def _scoring_section(report: dict[str, Any]) -> str:
    check = dict(report.get("scoring_check") or {})
    chosen = check.pop("chosen", report.get("scoring"))
    reason = check.pop("reason", None)
    text = f"Scoring: **{chosen}**" + (f" ({reason})" if reason else "") + "."
    if check:
        text += "\n\n" + _md_table(["check", "value"], [[_humanize(k), _plain(v)] for k, v in check.items()])
    return text


def _letters_section(report: dict[str, Any]) -> str:
    letters = report.get("letters") or {}
    columns = [("correct", "correct"), ("predicted_baseline", "predicted, unsteered"),
               ("predicted_steered", "predicted, steered")]
    present = [(key, title) for key, title in columns if letters.get(key)]
    parts = []
    if present:
        names = sorted({letter for key, _ in present for letter in letters[key]})
        rows = [[name, *(str(letters[key].get(name, 0)) for key, _ in present)] for name in names]
        parts.append(_md_table(["letter", *(title for _, title in present)], rows))
    constant = (report.get("controls") or {}).get("constant_letter")
    if constant:
        parts.append(
            f"Best constant-letter accuracy: {_acc(constant.get('accuracy'))} "
            f"(always answering {constant.get('letter')})."
        )
    return "\n\n".join(parts)


def _sweep_section(report: dict[str, Any]) -> str:
    layers, strengths, cells = _sweep_table(report)
    chosen = (report.get("layer"), report.get("strength"))
    baseline = _acc(report["baseline"].get("val_accuracy"))
    text = (
        f"Grid: layers {', '.join(str(x) for x in layers)}; "
        f"strengths {', '.join(_strength(s) for s in strengths)} "
        f"({len(layers) * len(strengths)} points). Validation accuracy of {report['method']} (first seed); "
        f"unsteered: {baseline}; bold: the chosen point."
    )
    if cells:
        rows = []
        for layer in layers:
            row = [str(layer)]
            for s in strengths:
                value = _acc(cells.get((layer, s)))
                row.append(f"**{value}**" if (layer, s) == chosen else value)
            rows.append(row)
        text += "\n\n" + _md_table(["layer \\ strength", *(_strength(s) for s in strengths)], rows)
    images = [
        f"![Validation accuracy by layer and strength]({HEATMAP_PNG})",
        f"![Validation accuracy vs strength]({STRENGTH_PNG})",
        f"![Validation accuracy vs layer]({LAYER_PNG})",
    ]
    return text + "\n\n" + "\n\n".join(images)


def _fixed_width(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others.

    A row shorter than the header ends in a note that spans the remaining columns and does not widen them.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        measured = row if len(row) == len(headers) else row[:-1]
        for i, cell in enumerate(measured):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if len(cells) < len(headers) and i == len(cells) - 1:
                out.append(cell)
            else:
                out.append(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def result_table(report: dict[str, Any]) -> str:
    """A compact fixed-width summary for the terminal: methods, the chosen method's controls, the verdict."""
    method = report["method"]
    rows = []
    for name, r in _methods(report).items():
        label = f"{name} (chosen)" if name == method else name
        rows.append([label, f"skipped: {r['skipped']}"] if "skipped" in r else [label, *_method_cells(r)])
    lines = _fixed_width(["method", *_METHOD_HEADERS], rows)
    controls = _fixed_width([f"controls of {method}", "test acc", "delta", "95% CI"], _control_rows(report))
    lines += ["", *controls]
    seeds = report.get("seeds")
    over = f", {seeds} seeds" if isinstance(seeds, int) and seeds > 1 else ""
    setting = f"layer {report.get('layer')}, strength {_strength(report.get('strength'))}{over}"
    random = (report.get("controls") or {}).get("random_direction")
    lines += ["", f"chosen: {method} ({setting}); {_verdict(report.get('delta_ci95'), random)}"]
    return "\n".join(lines)


def _title(report: dict[str, Any], what: str) -> str:
    return f"{what}\n{report.get('task')} · {report.get('model')} · {report['method']}"


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_heatmap(report: dict[str, Any]) -> Figure:
    layers, strengths, cells = _sweep_table(report)
    baseline = _num(report["baseline"].get("val_accuracy"))
    width = min(16.0, max(6.5, 0.9 * len(strengths) + 3.5))
    height = min(12.0, max(4.5, 0.5 * len(layers) + 2.5))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    what = f"Validation accuracy, layer x strength (unsteered {_acc(baseline)})"
    ax.set_title(_title(report, what), fontsize=10)
    if not cells:
        _no_data(ax, "no validation sweep")
        return fig
    # NaN marks grid points without a result; imshow leaves them blank.
    data = [[cells.get((layer, s), math.nan) for s in strengths] for layer in layers]
    lo, hi = min(cells.values()), max(cells.values())
    im = ax.imshow(data, cmap="viridis", aspect="auto", origin="lower", vmin=lo, vmax=hi)
    ax.set_xticks(range(len(strengths)), labels=[_strength(s) for s in strengths])
    ax.set_yticks(range(len(layers)), labels=[str(layer) for layer in layers])
    ax.set_xlabel("strength")
    ax.set_ylabel("layer")
    fontsize = 9 if len(strengths) <= 8 else 7
    for i, layer in enumerate(layers):
        for j, s in enumerate(strengths):
            if (layer, s) in cells:
                acc = cells[(layer, s)]
                # Dark text on the light (high) end of viridis, light text on the dark end.
                color = "black" if hi > lo and (acc - lo) / (hi - lo) > 0.5 else "white"
                ax.text(j, i, f"{acc:.3f}", ha="center", va="center", color=color, fontsize=fontsize)
            if (layer, s) == (report.get("layer"), report.get("strength")):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
                                       clip_on=False))
    cbar = fig.colorbar(im, ax=ax)
    label = "validation accuracy"
    if baseline is not None and lo <= baseline <= hi:
        cbar.ax.axhline(baseline, color="red", linestyle="--", linewidth=1.5)
        label += " (dashed: unsteered)"
    cbar.set_label(label + "; red box: chosen")
    return fig


def _line_plot(
    report: dict[str, Any],
    what: str,
    xlabel: str,
    points: list[tuple[float, float]],
    chosen_x: Any,
    configure_x: Callable[[Axes, list[float]], None],
) -> Figure:
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(report, what), fontsize=10)
    if not points:
        _no_data(ax, "no validation sweep rows for this setting")
        return fig
    xs = [x for x, _ in points]
    ax.plot(xs, [y for _, y in points], marker="o", color="C0", label=report["method"])
    for x, y in points:
        if x == chosen_x:
            ax.plot([x], [y], marker="*", markersize=16, color="C3", linestyle="none", label="chosen")
    baseline = _num(report["baseline"].get("val_accuracy"))
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"unsteered ({baseline:.3f})")
    configure_x(ax, xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return fig


def _strength_axis(ax: Axes, xs: list[float]) -> None:
    # Strength grids are usually geometric; a log axis spreads them evenly once they span more than 10x.
    if min(xs) > 0 and max(xs) > 10 * min(xs):
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(xs, labels=[_strength(x) for x in xs])


def _layer_axis(ax: Axes, xs: list[float]) -> None:
    ax.set_xticks(xs, labels=[f"{x:g}" for x in xs])


def _plot_vs_strength(report: dict[str, Any]) -> Figure:
    _, strengths, cells = _sweep_table(report)
    layer = report.get("layer")
    points = [(float(s), cells[(layer, s)]) for s in sorted(strengths) if (layer, s) in cells]
    return _line_plot(report, f"Validation accuracy vs strength at layer {layer}", "strength", points,
                      report.get("strength"), _strength_axis)


def _plot_vs_layer(report: dict[str, Any]) -> Figure:
    layers, _, cells = _sweep_table(report)
    strength = report.get("strength")
    points = [(float(layer), cells[(layer, strength)])
              for layer in sorted(layers) if (layer, strength) in cells]
    what = f"Validation accuracy vs layer at strength {_strength(strength)}"
    return _line_plot(report, what, "layer", points, report.get("layer"), _layer_axis)


def _plot_deltas(report: dict[str, Any]) -> Figure:
    method = report["method"]
    # (label, delta, CI, per-seed deltas, style key)
    entries: list[tuple[str, float | None, Any, list[float], str]] = []
    for name, r in _methods(report).items():
        if "skipped" in r:
            continue
        seed_deltas = [d for d in (_num(s.get("delta")) for s in _seeds(r)) if d is not None]
        # A single seed's point would only repeat the method's own marker.
        per_seed = seed_deltas if len(seed_deltas) > 1 else []
        kind = "chosen" if name == method else "method"
        entries.append((f"{name}\n(chosen)" if kind == "chosen" else name, _num(r.get("delta")),
                        r.get("delta_ci95"), per_seed, kind))
    n_methods = len(entries)
    for label, control in _controls(report.get("controls")):
        if "delta" in control:
            entries.append((label.replace(" (k=", "\n(k="), _num(control["delta"]), control.get("delta_ci95"),
                            [], "control"))

    styles = {"chosen": ("C3", "chosen method"), "method": ("C0", "other methods"),
              "control": ("C7", f"controls ({method})")}
    fig = Figure(figsize=(max(7.0, 1.2 * len(entries) + 2.5), 5.0), layout="constrained")
    ax = fig.add_subplot()
    n_test = f", {report['n_test']} test items" if "n_test" in report else ""
    ax.set_title(_title(report, f"Test accuracy delta vs unsteered, 95% CI{n_test}"), fontsize=10)
    if not entries:
        _no_data(ax, "no test results")
        return fig
    labelled: set[str] = set()
    for x, (_, delta, ci, per_seed, kind) in enumerate(entries):
        color, legend = styles[kind]
        if delta is not None:
            b = _bounds(ci)
            yerr = None if b is None else [[max(0.0, delta - b[0])], [max(0.0, b[1] - delta)]]
            ax.errorbar([x], [delta], yerr=yerr, fmt="o", color=color, capsize=5, markersize=8,
                        label=None if kind in labelled else legend)
            labelled.add(kind)
        if per_seed:
            ax.plot([x + 0.18] * len(per_seed), per_seed, marker="o", linestyle="none",
                    markerfacecolor="none", color=color, markersize=5,
                    label=None if "seed" in labelled else "per seed")
            labelled.add("seed")
    ax.axhline(0.0, color="black", linewidth=0.8)
    if 0 < n_methods < len(entries):
        ax.axvline(n_methods - 0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(entries)), labels=[e[0] for e in entries], fontsize=9)
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.set_ylabel("test accuracy delta")
    ax.grid(True, axis="y", alpha=0.3)
    if labelled:
        ax.legend(loc="best", fontsize=9)
    return fig
