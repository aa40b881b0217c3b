"""The report of ``steerlab run``: data first (report.json), then views rendered from that data only.

Every view is a pure function of the report dict (``RunReport.to_dict()``), so the same dict always gives
byte-identical files: report.json, report.md, three PNG plots, and the plain-text table the CLI prints.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from steerlab.core.vector import atomic_output
from steerlab.errors import ConfigError
from steerlab.experiment.compare import markdown as sft_markdown
from steerlab.experiment.plots import (
    EFFECTS_PNG,
    GAIN_PNG,
    STRENGTH_PNG,
    finite,
    plot_effects,
    plot_gain,
    plot_vs_strength,
    png,
)
from steerlab.experiment.retention import markdown as retention_markdown

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.json, report.md and the PNG plots into ``out_dir``; return their paths.

    Everything is rendered in memory before the first file is touched, and every file goes through a temporary
    that replaces its target only once all files are written, so a failure leaves no partial or temporary file
    and, short of a failing rename, the folder as it was.
    """
    outputs: dict[str, bytes] = {
        REPORT_JSON: _json_bytes(report),
        REPORT_MD: render_markdown(report).encode("utf-8"),
        GAIN_PNG: png(plot_gain(report)),
        STRENGTH_PNG: png(plot_vs_strength(report)),
        EFFECTS_PNG: png(plot_effects(report)),
    }
    return write_together(outputs, out_dir)


def write_together(outputs: dict[str, bytes], out_dir: str | Path) -> list[Path]:
    """Write each named file into ``out_dir`` through a temporary that replaces it only once all are written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Contexts exit last-in first-out, so the first file (report.json) is the last to appear.
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


def _acc(value: Any) -> str:
    x = finite(value)
    return "n/a" if x is None else f"{x:.3f}"


def _signed(value: Any) -> str:
    x = finite(value)
    if x is None:
        return "n/a"
    # Tiny negatives would otherwise print as "-0.000".
    return f"{0.0 if round(x, 3) == 0 else x:+.3f}"


def _estimate(estimate: Any) -> str:
    """``+0.123 [+0.010, +0.240]`` from an Estimate dict."""
    if not isinstance(estimate, dict):
        return "n/a"
    low, high = finite(estimate.get("low")), finite(estimate.get("high"))
    interval = "" if low is None or high is None else f" [{_signed(low)}, {_signed(high)}]"
    return _signed(estimate.get("value")) + interval


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: Iterable[list[str]], left: int = 1) -> str:
    """A markdown table whose first ``left`` columns are left-aligned and the rest right-aligned (numbers)."""
    aligns = [":---" if i < left else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _chosen(report: dict[str, Any]) -> dict[str, Any]:
    chosen: dict[str, Any] = report["methods"][report["method"]]
    return chosen


def _layers(seed: dict[str, Any]) -> str:
    return "+".join(str(layer) for layer in seed.get("layers") or [seed["layer"]])


def _point(seed: dict[str, Any], unit: str) -> str:
    layers = seed.get("layers") or [seed["layer"]]
    plural = "s" if len(layers) > 1 else ""
    return f"layer{plural} {_layers(seed)}, strength {seed['strength']:g} ({unit}), positions {seed['positions']}"


def headline(report: dict[str, Any]) -> str:
    """One sentence: the chosen method and point, the test effect, the directional gain, the verdict."""
    m = _chosen(report)
    seed = m["per_seed"][0]
    acc = m["test_accuracy"]
    seeds = f" (first of {len(m['per_seed'])} seeds)" if len(m["per_seed"]) > 1 else ""
    return (f"{report['method']} at {_point(seed, report['unit'])}{seeds}: test accuracy {_acc(acc['baseline'])} -> "
            f"{_acc(acc['steered'])}, delta {_estimate(m['delta'])}; directional gain over {m['random_directions']} "
            f"random directions of the same norm {_estimate(m['directional_gain'])}, rank {m['rank']} of "
            f"{m['random_directions'] + 1} (p = {m['p_value']:.3f}). Verdict: **{m['verdict']}** "
            f"({m['verdict_text']})")


_METHOD_HEADERS = ["method", "verdict", "delta [95% CI]", "directional gain [95% CI]", "negated vector",
                   "random (mean)", "rank (p)", "test unsteered", "test steered"]


def _method_row(name: str, m: dict[str, Any], chosen: bool) -> list[str]:
    acc = m["test_accuracy"]
    return [f"{name} (chosen)" if chosen else name, m["verdict"], _estimate(m["delta"]),
            _estimate(m["directional_gain"]), _estimate(m["negated_delta"]), _estimate(m["random_delta"]),
            f"{m['rank']}/{m['random_directions'] + 1} ({m['p_value']:.3f})", _acc(acc["baseline"]),
            _acc(acc["steered"])]


_SEED_HEADERS = ["method", "seed", "positions", "layers", "strength", "added norm", "val unsteered",
                 "val +s (optimistic)", "val -s", "test unsteered", "test +s", "test -s", "test random", "rank"]


def _seed_rows(report: dict[str, Any]) -> list[list[str]]:
    return [[name, str(s["seed"]), s["positions"], _layers(s), f"{s['strength']:g}", f"{s['added_norm']:.3g}",
             _acc(s["val_baseline"]), _acc(s["val_accuracy_optimistic"]), _acc(s["val_negated"]),
             _acc(s["test_baseline"]), _acc(s["test_steered"]), _acc(s["test_negated"]), _acc(s["test_random_mean"]),
             str(s["rank"])]
            for name, m in report["methods"].items() for s in m["per_seed"]]


def _control_rows(report: dict[str, Any]) -> list[list[str]]:
    m = _chosen(report)
    acc = m["test_accuracy"]
    controls = report.get("controls") or {}
    rows = [["unsteered", _acc(acc["baseline"]), "-"],
            [f"steered ({report['method']})", _acc(acc["steered"]), _estimate(m["delta"])],
            ["negated vector", _acc(acc["negated"]), _estimate(m["negated_delta"])],
            [f"random directions (mean of {m['random_directions']})", _acc(acc["random"]),
             _estimate(m["random_delta"])]]
    if "icl" in controls:
        icl = controls["icl"]
        rows.append([f"ICL (k={icl['k']})", _acc(icl["test_accuracy"]), _estimate(icl)])
    if m.get("icl_steering"):
        rows.append([f"ICL + steering (k={controls.get('icl', {}).get('k')})",
                     _acc(m["icl_steering"]["test_accuracy"]), _estimate(m["icl_steering"])])
    if "constant_letter" in controls:
        rows.append([f"best constant letter ({controls['constant_letter']['letter']})",
                     _acc(controls["constant_letter"]["accuracy"]), "-"])
    if "shortest_answer" in controls:
        rows.append(["always the shortest answer", _acc(controls["shortest_answer"]["accuracy"]), "-"])
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report.md."""
    config = report.get("config") or {}
    parts = [f"# steerlab report: {report.get('task')}", headline(report) + "."]
    n_test = config.get("n_test")
    if n_test is None:  # --n-test all: the count is the test split's
        n_test = f"all {len(_chosen(report)['per_item'][0]['ids'])}"
    target = config.get("steer_target", "residual")
    setup = [
        f"- Model: `{report.get('model')}` ({(report.get('model_identity') or {}).get('dtype')})",
        f"- Task: `{report.get('task')}`; items: {config.get('n_train')} train, {config.get('n_val')} validation, "
        f"{n_test} test; seeds: {config.get('seeds')} (from {config.get('seed')})"
        + (f"; vectors from the first {config['vector_items']} training items" if config.get("vector_items") else "")
        + (f"; steered at the **{target}** output of each block" if target != "residual" else ""),
        f"- Methods: {', '.join(report['methods'])}; selection: **{config.get('select')}**; the method on top has the "
        "best mean selection score",
        f"- Scoring: {report.get('scoring')}; strengths in **{report.get('unit')}** units"
        + (" (fractions of the mean residual norm at the layer)" if report.get("unit") == "relative" else ""),
        f"- Intervals: {report.get('ci_method')}; rank and p-value: among the random directions, pooled over seeds",
        f"- steerlab {report.get('steerlab_version')}",
    ]
    parts += ["## Setup", "\n".join(setup)]
    parts += ["## Methods", _md_table(_METHOD_HEADERS, [_method_row(n, m, n == report["method"])
                                                         for n, m in report["methods"].items()], left=2)]
    if report.get("skipped"):
        parts.append("Skipped: " + "; ".join(f"{n} ({why})" for n, why in report["skipped"].items()) + ".")
    parts += ["### Chosen point per seed",
              "Validation accuracy at the chosen point is optimistic: it is a maximum over the grid.",
              _md_table(_SEED_HEADERS, _seed_rows(report), left=3)]
    parts += [f"## Controls ({report['method']})",
              _md_table(["", "test accuracy", "delta vs unsteered [95% CI]"], _control_rows(report))]
    parts += ["## Scoring", _scoring_section(report)]
    parts += ["## Validation sweep", _sweep_section(report)]
    grown = {name: m for name, m in report["methods"].items() if m.get("multi_layer")}
    if grown:
        parts += ["## Layer sets", _layer_set_section(grown)]
    if report.get("retention"):
        parts += ["## Retention: what the steering costs elsewhere", retention_markdown(report["retention"])]
    if report.get("sft"):
        parts += ["## PAS, LoRA and LoRA + PAS", sft_markdown(report["sft"])]
    parts += ["## Test effects", f"![Test deltas of the vector, its negation and random directions]({EFFECTS_PNG})"]
    timings = report.get("timings") or {}
    if timings:
        parts += ["## Timings", _md_table(["phase", "seconds"], [[k.replace("_", " "), f"{v:.1f}"]
                                                                 for k, v in timings.items()])]
    return "\n\n".join(parts) + "\n"


def _scoring_section(report: dict[str, Any]) -> str:
    check = dict(report.get("scoring_check") or {})
    chosen = check.pop("chosen", report.get("scoring"))
    reason = check.pop("reason", None)
    text = f"Scoring: **{chosen}**" + (f" ({reason})" if reason else "") + "."
    if check:
        rows = [[k.replace("_", " "), _acc(v) if isinstance(v, float) else str(v)] for k, v in check.items()]
        text += "\n\n" + _md_table(["check", "value"], rows)
    letters = report.get("letters") or {}
    if letters.get("correct"):
        names = sorted(letters["correct"])
        rows = [[n, str(letters["correct"].get(n, 0)), str(letters.get("predicted_baseline", {}).get(n, 0))]
                for n in names]
        text += "\n\n" + _md_table(["letter", "correct (test)", "predicted, unsteered"], rows)
    return text


def _sweep_section(report: dict[str, Any]) -> str:
    m = _chosen(report)
    seed = m["per_seed"][0]
    grid = report.get("grid") or {}
    strengths = grid.get("strengths") or []
    text = (f"Validation accuracy of {report['method']} (first seed) at +s / -s, unsteered "
            f"{_acc(seed['val_baseline'])}; bold: the chosen point. Directional gain = half the gap.")
    cells = {(r["positions"], r["layer"], r["strength"]): r for r in m["sweep"]}
    for where in grid.get("positions") or []:
        rows = []
        for layer in grid.get("layers") or []:
            row = [str(layer)]
            for s in strengths:
                cell = cells.get((where, layer, s))
                value = "n/a" if cell is None else f"{cell['val_accuracy']:.2f} / {cell['negated_val_accuracy']:.2f}"
                chosen = (where, layer, s) == (seed["positions"], seed["layer"], seed["strength"])
                row.append(f"**{value}**" if chosen else value)
            rows.append(row)
        text += f"\n\nPositions **{where}**:\n\n" + _md_table([r"layer \ strength", *(f"{s:g}" for s in strengths)],
                                                             rows)
    images = [f"![Directional gain by layer and strength]({GAIN_PNG})",
              f"![Validation accuracy vs signed strength]({STRENGTH_PNG})"]
    return text + "\n\n" + "\n\n".join(images)


def _layer_set_section(grown: dict[str, dict[str, Any]]) -> str:
    """Every layer set the greedy search tried (first seed), at its best strength; bold: the set it kept."""
    text = ("Greedy forward selection from the single-layer point: each step adds the layer (own vector, shared "
            "strength) whose set scores best, and stops when nothing beats the current set.")
    for name, m in grown.items():
        seed = m["per_seed"][0]
        best: dict[tuple[int, ...], dict[str, Any]] = {}
        for cell in m["sweep"]:
            key = (cell["layer"], *cell["added_layers"])
            if key not in best or cell["gain"] > best[key]["gain"]:
                best[key] = cell
        rows = []
        for key, cell in best.items():
            label = "+".join(map(str, key))
            rows.append([f"**{label}**" if list(key) == seed["layers"] else label, f"{cell['strength']:g}",
                         _acc(cell["val_accuracy"]), _acc(cell["negated_val_accuracy"]), f"{cell['gain']:+.3f}"])
        text += f"\n\n{name}, kept: layers {_layers(seed)}\n\n" + _md_table(
            ["layers", "best strength", "val +s", "val -s", "gain"], rows)
    return text


def _fixed_width(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in [headers, *rows]]


def result_table(report: dict[str, Any]) -> str:
    """A compact fixed-width summary for the terminal: methods, the chosen method's controls, the verdict."""
    headers = ["method", "verdict", "delta [95% CI]", "directional gain [95% CI]", "negated", "random", "rank"]
    rows = [_method_row(n, m, n == report["method"])[:7] for n, m in report["methods"].items()]
    lines = _fixed_width(headers, rows)
    lines += ["", *_fixed_width([f"controls of {report['method']}", "test acc", "delta [95% CI]"],
                                _control_rows(report))]
    m = _chosen(report)
    points = "; ".join(f"seed {s['seed']}: {_point(s, report['unit'])}" for s in m["per_seed"])
    lines += ["", f"chosen: {report['method']} ({points})", f"verdict: {m['verdict']}: {m['verdict_text']}"]
    if report.get("retention"):
        lines.append(f"retention: {report['retention']['cost']}: {report['retention']['verdict_text']}")
    if report.get("sft"):
        lines += ["", *_fixed_width(["compare", "test acc", "delta [95% CI]", "seconds", "bytes"], [
            [a["name"], _acc(a["test_accuracy"]["value"]), _estimate(a["delta"]), f"{a['seconds']:.0f}",
             f"{a['bytes_stored']:,}"] for a in report["sft"]["arms"]])]
    return "\n".join(lines)
