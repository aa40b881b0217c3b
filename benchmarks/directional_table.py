"""The README's directional-PAS table: a row per task and method, from ``steerlab run`` report.json files.

    bash benchmarks/directional_tasks.sh runs/directional         # runs the tasks (resumable)
    python benchmarks/directional_table.py runs/directional/*/report.json

Every number is printed whatever it says: delta and directional gain with their 95% intervals (paired
bootstrap over seeds and items), the negated vector's and the mean random direction's deltas, the rank among
the random directions with its permutation p-value, and each seed's chosen positions / layer / strength.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _estimate(e: dict[str, Any]) -> str:
    low, high = e.get("low"), e.get("high")
    interval = "" if low is None or high is None else f" [{low:+.3f}, {high:+.3f}]"
    return f"{e['value']:+.3f}{interval}"


def _layers(seed: dict[str, Any]) -> str:
    return "+".join(map(str, seed.get("layers") or [seed["layer"]]))


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for name, m in report["methods"].items():
        acc = m["test_accuracy"]
        rank = f"{m['rank']}/{m['random_directions'] + 1} ({m['p_value']:.3f})"
        points = ", ".join(f"{s['positions']}/{_layers(s)}/{s['strength']:g}" for s in m["per_seed"])
        out.append([report["task"], name, f"{acc['baseline']:.3f} -> {acc['steered']:.3f}",
                    _estimate(m["delta"]), _estimate(m["directional_gain"]), _estimate(m["negated_delta"]),
                    _estimate(m["random_delta"]), rank, points, m["verdict"]])
    return out


def main(paths: list[str]) -> int:
    headers = ["task", "method", "test acc", "delta [95% CI]", "directional gain [95% CI]", "negated vector",
               "random (mean)", "rank (p)", "positions/layer/strength per seed", "verdict"]
    table = [r for path in paths for r in rows(json.loads(Path(path).read_text()))]
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join([":---", ":---"] + ["---:"] * 6 + [":---", ":---"]) + " |")
    for r in table:
        print("| " + " | ".join(r) + " |")
    for kind, picked in (("single-layer", [r for r in table if not r[1].endswith("+layers")]),
                         ("layer-set", [r for r in table if r[1].endswith("+layers")])):
        if picked:
            directional = sum(1 for r in picked if r[-1] == "directional")
            print(f"\n{directional} of {len(picked)} {kind} task x method rows: directional gain interval "
                  "above 0.")
    # The sweep carries each strength's negation; the test point K random directions and the negation.
    for path in paths:
        report = json.loads(Path(path).read_text())
        timings = report["timings"]
        plain = timings.get("val_unsteered_pass") or float("nan")
        sweep = timings.get("sweep", 0.0)
        print(f"- {report['task']}: sweep {sweep:.0f} s = {sweep / plain:.1f}x one plain validation pass "
              f"({plain:.1f} s); test with the random rows {timings.get('test', 0):.0f} s; "
              f"total {timings.get('total', 0):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
