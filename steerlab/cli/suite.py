"""``steerlab suite``: a grid of ``steerlab run`` units (tasks x models x methods x seeds), serial or on Ray."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from steerlab.cli.common import RETAIN_HELP, Bars, add_device_flags, count, floats, ints, note, retain_settings


def _names(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


# `steerlab run` settings a flag sets for every unit, overriding a spec file's ``run`` (their default is None).
_RUN_FLAGS: dict[str, dict[str, Any]] = {
    "layers": {"type": ints}, "strengths": {"type": floats}, "unit": {"choices": ("relative", "absolute")},
    "select": {"choices": ("directional", "accuracy")}, "max_layers": {"type": int}, "n_train": {"type": int},
    "n_val": {"type": int}, "n_test": {"type": int}, "random_directions": {"type": int},
    "scoring": {"choices": ("auto", "letters", "likelihood")}, "icl_k": {"type": int}, "batch_size": {"type": int},
    "positions": {"type": _names}}


def _spec(args: argparse.Namespace) -> Any:
    from steerlab.errors import ConfigError
    from steerlab.experiment.config import RunConfig
    from steerlab.methods.pas import PAS_METHODS
    from steerlab.suite.spec import EMBEDDED, SuiteSpec, load_spec

    if args.spec:
        spec = load_spec(args.spec)
    elif args.tasks:
        spec = SuiteSpec(tasks=args.tasks)
    else:
        raise ConfigError("give the grid: --tasks (with --models, --methods, --seeds) or --spec FILE")
    grid: dict[str, Any] = {}
    if args.tasks:
        grid["tasks"] = args.tasks
    if args.models:
        grid["models"] = args.models
    if args.methods:
        grid["methods"] = PAS_METHODS if args.methods == ("all",) else args.methods
    if args.seeds is not None or args.seed != 0:
        grid["seeds"] = tuple(range(args.seed, args.seed + (args.seeds or 1)))
    for name in ("dtype", "device", "device_map"):
        if getattr(args, name) is not None:
            grid[name] = getattr(args, name)
    settings = {name: getattr(args, name) for name in _RUN_FLAGS if getattr(args, name) is not None}
    settings.update(retain_settings(args.retain))
    if args.no_chat:
        settings["chat"] = False
    spec = replace(spec, **grid, run=replace(spec.run if args.spec else RunConfig(), **settings))
    if EMBEDDED in spec.models and len(spec.models) > 1 and not args.quiet:
        note(args, f"'{EMBEDDED}' stands for the embedded SmolLM2-135M-Instruct")
    return spec


def cmd_suite(args: argparse.Namespace) -> int:
    from steerlab.suite.run import run_suite

    spec = _spec(args)
    out = Path(args.out)
    total = len(spec.units())
    backend = "serially" if args.workers == 1 and args.address is None else (
        f"on Ray ({args.workers} workers{'' if args.address is None else f' at {args.address}'})")
    note(args, f"suite: {total} units ({len(spec.models)} models x {len(spec.tasks)} tasks x {len(spec.methods)} "
               f"methods x {len(spec.seeds)} seeds), {backend}, into {out}/")
    bars = Bars(not args.quiet)
    report = run_suite(spec, out, workers=args.workers, address=args.address, cpus_per_worker=args.cpus_per_worker,
                       gpus_per_worker=args.gpus_per_worker, progress=bars)
    bars.close()
    width = max([len(c.task) for c in report.cells] + [4])
    print(f"{'task':<{width}}  {'method':<8}  {'seeds':>5}  {'delta [95% CI]':>24}  {'gain [95% CI]':>24}  verdict")
    for c in report.cells:
        def fmt(e: Any) -> str:
            return f"{e.value:+.3f}" + ("" if e.low is None else f" [{e.low:+.3f}, {e.high:+.3f}]")
        retained = "" if c.retention is None else f"  retention {fmt(c.retention)}, KL {c.retention_kl:.4f}"
        print(f"{c.task:<{width}}  {c.method:<8}  {len(c.seeds):>5}  {fmt(c.delta):>24}  "
              f"{fmt(c.directional_gain):>24}  {c.verdict}{retained}")
    for failed in report.failed:
        print(f"failed: {failed.unit.label}: {failed.error}", file=sys.stderr)
    done = sum(u.outcome == "done" for u in report.units)
    print(f"\n{done} of {total} units done, {len(report.failed)} failed; wrote {out}/suite.json, suite.md, "
          "suite_effects.png and units/")
    return 1 if report.failed else 0


def register(sub: Any) -> None:
    """Add ``suite`` to the ``steerlab`` subparsers."""
    p = sub.add_parser("suite", help="a grid of runs (tasks x models x methods x seeds), resumable, serial or on "
                                     "Ray, with one aggregate report")
    p.add_argument("--spec", help="a YAML or JSON suite file (tasks, models, methods, seeds, dtype, device, run: "
                                  "{steerlab run settings}); flags given as well override it")
    p.add_argument("--tasks", type=_names, help="comma list of built-in tasks or data files")
    p.add_argument("--models", type=_names,
                   help="comma list of hub ids, model folders or .gguf files; 'embedded' is the default model")
    p.add_argument("--methods", type=_names, help="comma list of pas-full, ipas-all, ipas-wo, caa, or all "
                                                  "(default ipas-wo)")
    p.add_argument("--seeds", type=count, help="seeds per (model, task, method), from --seed (default 1)")
    p.add_argument("--seed", type=int, default=0)
    for name, kind in _RUN_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, **kind, help=f"as in steerlab run {flag}, for every unit (overrides the spec file)")
    p.add_argument("--retain", nargs="?", const="mmlu", metavar="TASK[:N]", help=RETAIN_HELP + ", for every unit")
    p.add_argument("--no-chat", action="store_true", help="do not apply the models' chat templates")
    p.add_argument("--out", default="steerlab-suite", help="output folder (default steerlab-suite); re-running "
                                                            "resumes, skipping finished units")
    p.add_argument("--workers", type=count, default=1,
                   help="model replicas running at once (default 1: serial, no Ray); above 1 runs on Ray")
    p.add_argument("--address", help="join a running Ray cluster (host:port, ray://host:port or auto) instead of "
                                     "starting a local one")
    p.add_argument("--cpus-per-worker", type=count, default=1, help="CPUs (and torch threads) per replica")
    p.add_argument("--gpus-per-worker", type=float, default=0,
                   help="GPUs per replica; 1 puts it on cuda, more spreads it with --device-map auto")
    add_device_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or notes on stderr")
    p.set_defaults(func=cmd_suite, dtype=None)
