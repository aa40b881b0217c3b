"""The ``steerlab psr`` command: ``train`` a PSR model (or the constant baseline), ``eval`` it, ``table`` reports.

``register(subparsers)`` adds the command to steerlab's parser::

    steerlab psr train --instruction french --kind s-psr --out french.safetensors
    steerlab psr eval --instruction french --steering french.safetensors --out french-report
    steerlab psr table french-report/report.json caps-report/report.json

``train`` learns from the training slice of the prompts and ``eval`` chooses alpha on the validation slice and
reports on the test slice (:func:`steerlab.psr.data.split_prompts`); both draw the split from the same flags
(``--prompts``, ``--split-seed``, ``--val-prompts``, ``--test-prompts``), so give them the same values.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab.cli.common import Bars, add_common, count, floats, ints, load_model_from_args, output_file
from steerlab.errors import ConfigError

if TYPE_CHECKING:  # the command imports torch and the PSR modules only when it runs
    from steerlab.psr.checks import Instruction
    from steerlab.psr.data import PromptSplit


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--instruction",
        required=True,
        help="a built-in instruction name (caps, french, pirate, ocean, ...) or the instruction text",
    )
    p.add_argument(
        "--check",
        help='JSON check for a custom instruction, e.g. \'{"kind": "keyword", "words": '
        '["ocean"]}\' (eval; train ignores it)',
    )
    p.add_argument("--name", help="label of a custom instruction in reports (default: custom)")
    p.add_argument(
        "--prompts", type=Path, help="neutral user prompts, one per line (default: the built-in set)"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation/test split")
    p.add_argument(
        "--val-prompts", type=int, help="validation prompts, where alpha is chosen (default: 20%% of the prompts)"
    )
    p.add_argument("--test-prompts", type=int, help="test prompts, the ones reported (default: 25%% of the prompts)")
    p.add_argument("--max-new-tokens", type=count, default=48)
    p.add_argument("--batch-size", type=count, default=8)
    p.add_argument("--threads", type=count, help="torch CPU threads")
    add_common(p, chat=False)


def register(subparsers: Any) -> None:
    """Add ``psr train`` and ``psr eval`` to an argparse subparsers object; handlers are in ``func``."""
    psr = subparsers.add_parser(
        "psr", help="prompt steering replacement: learn steering that does what a prompt does"
    )
    sub = psr.add_subparsers(dest="psr_command", required=True)

    p = sub.add_parser(
        "train", help="record what an instruction does and fit a PSR model or the constant vector"
    )
    _common(p)
    p.add_argument("--n-prompts", type=count, help="learn from at most this many of the training prompts")
    p.add_argument("--kind", choices=("constant", "s-psr", "a-psr"), default="s-psr")
    p.add_argument("--objective", choices=("mse", "likelihood"), default="mse")
    p.add_argument(
        "--layers",
        type=ints,
        help="layers to steer (default: 40%% depth for s-psr/constant, every depth/10-th for a-psr)",
    )
    p.add_argument("--epochs", type=count)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--hinge-weight", type=float, default=1.0)
    p.add_argument("--hinge-margin", type=float, default=1.0, help="floor under each layer's mean coefficient")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="activation cache folder (resumable; default $STEERLAB_CACHE/psr)")
    p.add_argument("--out", type=output_file, required=True, help="the .safetensors file to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval", help="prompting vs steering at matched coherence: report.json, report.md, plots"
    )
    _common(p)
    p.add_argument(
        "--steering",
        action="append",
        default=[],
        type=Path,
        help="a PSR or vector file; repeat to compare several (named NAME=PATH or by their kind); without "
        "any, only prompting and the unsteered model are measured",
    )
    p.add_argument("--alphas", type=floats, help="alpha grid (default 0.5,1,1.5,2,3,4,6)")
    p.add_argument("--refine", type=int, default=2, help="bisection steps at the coherence edge")
    p.add_argument(
        "--extend", type=int, default=4, help="doublings of alpha past the grid while still coherent"
    )
    p.add_argument("--coherence-target", type=float, default=0.8)
    p.add_argument("--ppl-max", type=float, default=10.0)
    p.add_argument("--rep-max", type=float, default=0.3)
    p.add_argument("--out", type=Path, default=Path("psr-report"), help="report folder")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("table", help="one Markdown table of several eval reports (the README's PSR table)")
    p.add_argument("reports", nargs="+", type=Path, help="report.json files of steerlab psr eval, one per row")
    p.add_argument(
        "--min-gain",
        type=float,
        help="steering columns only where prompting raises the validation follow rate by this much "
        "(default 0.25)",
    )
    p.add_argument("--out", type=output_file, help="write the table here instead of printing it")
    p.set_defaults(func=cmd_table)


def _setup(args: argparse.Namespace, *, judged: bool) -> tuple[Instruction, Any, Any, PromptSplit]:
    import torch

    from steerlab.psr.checks import Check, Instruction, builtin_instructions, resolve_instruction
    from steerlab.psr.data import load_prompts, split_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    if judged or args.instruction in builtin_instructions():
        instruction = resolve_instruction(args.instruction, args.check, args.name)
    else:  # training needs only the text; the check matters to eval
        instruction = Instruction(args.name or "custom", args.instruction, Check("no_commas"))
    for flag, value in (("--val-prompts", args.val_prompts), ("--test-prompts", args.test_prompts)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    split = split_prompts(
        load_prompts(args.prompts),
        seed=args.split_seed,
        validation=args.val_prompts,
        test=args.test_prompts,
        source=args.prompts or "built-in neutral prompts",
    )
    model, tok = load_model_from_args(args)
    return instruction, model, tok, split


def cmd_train(args: argparse.Namespace) -> int:
    """``steerlab psr train``: build (or resume) the activation data, fit, write the file."""
    from steerlab.models.loading import cache_root
    from steerlab.psr.data import build_activation_data
    from steerlab.psr.model import TrainSettings, default_layers, train_psr

    instruction, model, tok, split = _setup(args, judged=False)
    train = split.train
    if args.n_prompts is not None:
        if args.n_prompts < 1:
            raise ConfigError(f"--n-prompts must be at least 1, got {args.n_prompts}")
        train = train[: args.n_prompts]
    layers = args.layers or default_layers(model, args.kind)
    bars = Bars(not args.quiet)
    start = time.perf_counter()
    data = build_activation_data(
        model,
        tok,
        instruction.text,
        train,
        cache_dir=args.cache or cache_root() / "psr",
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=bars,
    )
    recorded = time.perf_counter() - start
    settings = TrainSettings(
        epochs=args.epochs,
        lr=args.lr,
        hinge_weight=args.hinge_weight,
        hinge_margin=args.hinge_margin,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    psr = train_psr(
        model, data, kind=args.kind, layers=layers, objective=args.objective, settings=settings, progress=bars
    )
    bars.close()
    psr.save(args.out)
    meta = psr.metadata or {}
    print(
        f"wrote {args.out}: {args.kind} ({meta.get('objective')}) at layers {psr.layer_indices} for "
        f'"{instruction.text}" from {len(data.items)} responses ({data.offsets[-1]} tokens) to '
        f"{len(train)} of the {len(split.train)} training prompts; data {recorded:.1f} s, training "
        f"{meta['training']['seconds']:.1f} s"
    )
    return 0


def _named(raw: Path) -> tuple[str, Path]:
    """``NAME=PATH`` or a plain path (whose name is then taken from the file)."""
    name, sep, rest = str(raw).partition("=")
    return (name, Path(rest)) if sep and name and not raw.exists() else ("", raw)


def _show(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def cmd_eval(args: argparse.Namespace) -> int:
    """``steerlab psr eval``: alpha search per steering file, then the report folder."""
    from steerlab.core.vector import SteeringVector
    from steerlab.files import load_steering
    from steerlab.models import hidden_size, model_name, num_layers
    from steerlab.psr.evaluate import (
        DEFAULT_ALPHAS,
        EvalSettings,
        evaluate,
        summary_rows,
        token_coefficients,
        write_coefficient_view,
        write_report,
    )
    from steerlab.psr.model import PSRModel

    instruction, model, tok, split = _setup(args, judged=True)
    methods: dict[str, Any] = {}
    for raw in args.steering:
        name, path = _named(raw)
        steering = load_steering(path)
        if not isinstance(steering, SteeringVector | PSRModel):
            raise ConfigError(f"{path} holds a conditional program: psr eval compares steering at matched "
                              "coherence on every prompt; give a steering vector or a PSR model")
        steering.check_compatible(hidden_size(model), num_layers(model), model_name(model))
        if not name:
            name = steering.psr_kind if isinstance(steering, PSRModel) else "vector"
        if name in methods:
            name = f"{name}:{path.stem}"
        methods[name] = steering
    settings = EvalSettings(
        alphas=tuple(args.alphas or DEFAULT_ALPHAS),
        refine=args.refine,
        extend=args.extend,
        coherence_target=args.coherence_target,
        ppl_max=args.ppl_max,
        rep_max=args.rep_max,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    bars = Bars(not args.quiet)
    report = evaluate(model, tok, instruction, split, methods, settings, bars)
    bars.close()
    written = write_report(report, args.out)
    for name, steering in methods.items():
        if isinstance(steering, PSRModel) and steering.psr_kind != "constant":
            view = token_coefficients(
                model, tok, steering, instruction.text, split.test[0], max_new_tokens=args.max_new_tokens
            )
            stem = name.replace(":", "_")
            png, page = args.out / f"coefficients_{stem}.png", args.out / f"coefficients_{stem}.html"
            write_coefficient_view(view, png, page)
            written += [png, page]
    sizes = split.summary()
    print(
        f"alpha chosen on {sizes['validation']} validation prompts; on the {sizes['test']} test prompts "
        f"({sizes['train']} training prompts, split seed {sizes['seed']}):"
    )
    for row in summary_rows(report):
        print(
            f"{row['method']:>10}  alpha {_show(row['alpha'])}  score {_show(row['score'])}  "
            f"coherent {_show(row['coherence'])}  median ppl {_show(row['median_ppl'])}"
        )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """``steerlab psr table``: the rows of several eval reports as one Markdown table."""
    import json

    from steerlab.core.vector import atomic_output
    from steerlab.errors import DataError
    from steerlab.psr.evaluate import DEFAULT_MIN_GAIN, table

    reports = []
    min_gain = DEFAULT_MIN_GAIN if args.min_gain is None else args.min_gain
    for path in args.reports:
        try:
            reports.append(json.loads(path.read_text("utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"not a readable report: {exc}", path=path) from None
        try:
            table(reports[-1:], min_gain)  # each report alone first, so a bad one is named
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"not a steerlab psr eval report: no field {exc} (written by an older version?)",
                            path=path) from None
    text = table(reports, min_gain)
    if args.out is None:
        print(text, end="")
    else:
        with atomic_output(args.out) as tmp:
            tmp.write_text(text, "utf-8")
        print(f"wrote {args.out}")
    return 0
