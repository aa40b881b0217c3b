"""Benchmark: training time of PSR models (constant, S-PSR, A-PSR; both objectives) on the embedded model.

The activation data is built first (or read from the cache) and timed apart; every fit uses the same data,
drawn from the training slice of the built-in prompts (split seed 0, as ``steerlab psr train`` draws it).
Run::

    python benchmarks/psr_train.py --n-prompts 32 --threads 1 --out psr_train.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from steerlab.models import load_model
from steerlab.models.loading import cache_root
from steerlab.psr.data import build_activation_data, load_prompts, split_prompts
from steerlab.psr.model import TrainSettings, default_layers, train_psr

FITS: list[tuple[str, str, int]] = [  # kind, objective, epochs
    ("constant", "mse", 1),
    ("s-psr", "mse", 40),
    ("s-psr", "likelihood", 1),
    ("a-psr", "mse", 1),
    ("a-psr", "likelihood", 1),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instruction", default="Respond in French.")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=cache_root() / "psr")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model()
    start = time.perf_counter()
    data = build_activation_data(
        model,
        tok,
        args.instruction,
        split_prompts(load_prompts()).train[: args.n_prompts],
        cache_dir=args.cache,
        max_new_tokens=args.max_new_tokens,
    )
    data_seconds = time.perf_counter() - start
    tokens = data.offsets[-1]
    rows: list[dict[str, Any]] = []
    for kind, objective, epochs in FITS:
        layers = default_layers(model, kind)
        start = time.perf_counter()
        train_psr(
            model,
            data,
            kind=kind,
            layers=layers,
            objective=objective,
            settings=TrainSettings(epochs=epochs, batch_size=8),
        )
        seconds = time.perf_counter() - start
        rows.append(
            {
                "kind": kind,
                "objective": objective if kind != "constant" else "mean-difference",
                "layers": layers,
                "epochs": epochs,
                "seconds": seconds,
                "seconds_per_epoch": seconds / epochs,
                "tokens_per_second": tokens * epochs / seconds,
            }
        )
    result = {
        "model": "SmolLM2-135M-Instruct (embedded)",
        "instruction": args.instruction,
        "responses": len(data.items),
        "response_tokens": tokens,
        "data_seconds": data_seconds,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "fits": rows,
    }
    print(
        f"{len(data.items)} responses, {tokens} response tokens; data {data_seconds:.1f} s "
        f"(cached if near zero); torch threads {args.threads}"
    )
    print(f"{'kind':<9} {'objective':<16} {'layers':>6} {'epochs':>6} {'s/epoch':>8} {'tokens/s':>9}")
    for row in rows:
        print(
            f"{row['kind']:<9} {row['objective']:<16} {len(row['layers']):>6} {row['epochs']:>6} "
            f"{row['seconds_per_epoch']:>8.2f} {row['tokens_per_second']:>9.0f}"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
