"""The PAS paper's two ablations on the embedded model: where the vector goes, and how much data it needs.

For each task, with everything else at ``steerlab run``'s defaults (ipas-wo, directional selection, relative
strengths, positions searched):

- steer target: the vector read and written at the block output (``residual``), the attention output
  (``attn``) or the MLP output (``mlp``) of each layer (``steerlab run --steer-target``);
- sample size: the vector built from the first 8, 16, 32, ... of the training items (``--vector-items``),
  with the validation and test items unchanged, so every point of the curve is measured on the same questions.

Each row: test delta and directional gain with 95% intervals (paired bootstrap over seeds and items), the
negated vector's delta, and the chosen point per seed. All runs of a task share one store under ``--runs``,
so the unsteered passes are computed once and an interrupted run resumes. Writes ``--out`` (JSON) and a plot
of the sample-size curve beside it (``.png``).

    . .venv/bin/activate && python benchmarks/ablations.py --seeds 2 \
        --tasks caa/corrigible-neutral-HHH,caa/coordinate-other-ais
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from steerlab.core.vector import atomic_output
from steerlab.data.tasks import load_task
from steerlab.experiment.config import RunConfig
from steerlab.experiment.runner import run_task
from steerlab.models import load_model
from steerlab.progress import Progress

from common import load_line, setup, table, timed


def _interval(e: dict[str, Any]) -> str:
    if e["low"] is None:
        return f"{e['value']:+.3f}"
    return f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"


def _progress(label: str) -> Progress:
    def report(done: int, total: int, what: str) -> None:
        print(f"\r{label}: {what} {done}/{total}".ljust(100), end="", flush=True)
    return report


def run_one(model: Any, tok: Any, task: str, config: RunConfig, runs: Path, label: str) -> dict[str, Any]:
    folder = runs / task.replace("/", "_")
    result, took = timed(lambda: run_task(model, tok, load_task(task), config, out_dir=folder,
                                          progress=_progress(f"{task} {label}")))
    print()
    report = result.report.to_dict()
    chosen = report["methods"][report["method"]]
    return {"task": task, "ablation": label, "steer_target": config.steer_target,
            "vector_items": config.vector_items or config.n_train, "seconds": took.wall,
            "baseline": chosen["test_accuracy"]["baseline"], "steered": chosen["test_accuracy"]["steered"],
            "delta": chosen["delta"], "directional_gain": chosen["directional_gain"],
            "negated_delta": chosen["negated_delta"], "verdict": chosen["verdict"],
            "points": [f"{s['positions']}/{s['layer']}/{s['strength']:g}" for s in chosen["per_seed"]]}


def row(r: dict[str, Any]) -> list[str]:
    return [r["task"], r["ablation"], f"{r['baseline']:.3f} -> {r['steered']:.3f}", _interval(r["delta"]),
            _interval(r["directional_gain"]), _interval(r["negated_delta"]), ", ".join(r["points"]),
            r["verdict"]]


def plot(results: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for task in dict.fromkeys(r["task"] for r in results):
        curve = sorted((r for r in results if r["task"] == task and r["steer_target"] == "residual"),
                       key=lambda r: r["vector_items"])
        xs = [r["vector_items"] for r in curve]
        for key, style in (("delta", "-o"), ("directional_gain", "--s")):
            values = [r[key]["value"] for r in curve]
            low = [r[key]["value"] - r[key]["low"] if r[key]["low"] is not None else 0.0 for r in curve]
            high = [r[key]["high"] - r[key]["value"] if r[key]["high"] is not None else 0.0 for r in curve]
            ax.errorbar(xs, values, yerr=[low, high], fmt=style, capsize=3,
                        label=f"{task}: {'delta' if key == 'delta' else 'directional gain'}")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training items the vector is built from")
    ax.set_ylabel("test accuracy change (95% CI)")
    ax.set_title("PAS (ipas-wo) sample-size curve, embedded model")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="caa/corrigible-neutral-HHH,caa/coordinate-other-ais")
    p.add_argument("--targets", default="residual,attn,mlp")
    p.add_argument("--sizes", default="8,16,32,64", help="training items per vector; the largest is n_train")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/ablations")
    p.add_argument("--out", default="benchmarks/results/ablations.json")
    args = p.parse_args()
    setup(args.threads)
    sizes = sorted(int(x) for x in args.sizes.split(","))
    targets = [t.strip() for t in args.targets.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(load_line("at start", args.threads))
    model, tok = load_model()
    results = []
    for task in (t.strip() for t in args.tasks.split(",")):
        base = RunConfig(task=task, n_train=sizes[-1], seeds=args.seeds)
        configs = {f"target {t}": replace(base, steer_target=t) for t in targets}
        configs |= {f"{n} items": replace(base, vector_items=n) for n in sizes[:-1]}
        for label, config in configs.items():
            results.append(run_one(model, tok, task, config, Path(args.runs), label))
            with atomic_output(out) as tmp:  # after every run, so a stopped benchmark keeps what it measured
                tmp.write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))
    print(load_line("at end", args.threads))
    headers = ["task", "ablation", "test acc", "delta [95% CI]", "directional gain [95% CI]",
               "negated vector", "positions/layer/strength per seed", "verdict"]
    print(table(headers, [row(r) for r in results]))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
