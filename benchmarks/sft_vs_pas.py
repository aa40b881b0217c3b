"""PAS beside LoRA fine-tuning and LoRA + PAS on the same items, with what each costs, on the embedded model.

For each task: ``steerlab run --compare sft --retain mmlu:N`` (ipas-wo, the default grids), one seed by
default. One table row per task: test accuracy of the unsteered model, the paired delta of PAS, LoRA and
LoRA + PAS with 95% intervals, PAS - LoRA, seconds to build each and bytes stored, and PAS's retention cost
(MMLU delta, KL and perplexity on neutral requests). Results go to ``--out`` (JSON) and are printed as a
table.

    . .venv/bin/activate && python benchmarks/sft_vs_pas.py --tasks caa/survival-instinct,ethics/commonsense

Runs keep their work under ``--runs`` (resumable). ``--quick`` shrinks the splits for a smoke run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from steerlab.core.vector import atomic_output
from steerlab.data.tasks import load_task
from steerlab.experiment.config import RunConfig
from steerlab.experiment.retention import parse_spec
from steerlab.experiment.runner import run_task
from steerlab.models import load_model

from common import load_line, setup, table, timed


def _interval(e: dict[str, Any]) -> str:
    if e["low"] is None:
        return f"{e['value']:+.3f}"
    return f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"


def run_one(model: Any, tok: Any, task: str, args: argparse.Namespace) -> dict[str, Any]:
    retain, retain_n = parse_spec(args.retain)
    config = RunConfig(task=task, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                       seeds=args.seeds, retain=retain, retain_n=retain_n, compare_sft=True)
    result, took = timed(lambda: run_task(model, tok, load_task(task), config,
                                          out_dir=Path(args.runs) / task.replace("/", "_")))
    report = result.report.to_dict()
    return {"task": task, "wall_seconds": took.wall, "cpu_seconds": took.cpu, "scoring": report["scoring"],
            "method": report["method"], "verdict": report["verdict"],
            "baseline": report["methods"][report["method"]]["test_accuracy"]["baseline"],
            "point": report["methods"][report["method"]]["per_seed"][0],
            "sft": report["sft"], "retention": report["retention"]}


def row(result: dict[str, Any]) -> list[str]:
    arms = {a["name"]: a for a in result["sft"]["arms"]}
    r = result["retention"]
    c = r["coherence"]
    return [result["task"], f"{result['baseline']:.3f}",
            *(_interval(arms[n]["delta"]) for n in ("pas", "lora", "lora+pas")),
            _interval(result["sft"]["pas_minus_lora"]),
            f"{arms['pas']['seconds']:.0f} / {arms['lora']['seconds']:.0f}",
            f"{arms['pas']['bytes_stored']:,} / {arms['lora']['bytes_stored']:,}",
            f"{_interval(r['delta'])} ({r['items']})",
            f"{c['kl']['value']:.4f}", f"{c['perplexity_unsteered']:.2f} -> {c['perplexity_steered']:.2f}"]


HEADERS = ["task", "unsteered acc", "PAS delta", "LoRA delta", "LoRA+PAS delta", "PAS - LoRA",
           "seconds PAS / LoRA", "bytes PAS / LoRA", "PAS on MMLU: delta (items)", "KL/token",
           "perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="caa/survival-instinct,ethics/commonsense")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-val", type=int, default=32)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--retain", default="mmlu:64")
    parser.add_argument("--runs", default="runs/sft_vs_pas")
    parser.add_argument("--out", default="benchmarks/results/sft_vs_pas.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="16 / 8 / 16 items and 16 retention items")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_val, args.n_test, args.retain = 16, 8, 16, "mmlu:16"
    setup(args.threads)
    print(load_line("at start", args.threads))
    model, tok = load_model()
    results = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        results.append(run_one(model, tok, task.strip(), args))
        print(f"{task}: {results[-1]['wall_seconds']:.0f} s wall, {results[-1]['cpu_seconds']:.0f} s CPU",
              flush=True)
        results[-1]["load"] = load_line("after it", args.threads)
        with atomic_output(out) as tmp:  # after every task, so a stopped benchmark keeps what it measured
            tmp.write_text(json.dumps({"settings": vars(args), "results": results}, indent=1))
    print(load_line("at end", args.threads))
    print(table(HEADERS, [row(r) for r in results]))


if __name__ == "__main__":
    main()
