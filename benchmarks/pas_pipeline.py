"""The whole ``steerlab run`` job, phase by phase, beside a plain batched forward over the same tokens.

Two parts, in one run, on the embedded model, and with ``--reference DIR`` the PAS reference code on the
first part's workload:

1. The PAS reference's workload (``caa/survival-instinct``, ipas-wo and pas-full, letter scoring, no chat
   template, 240 / 80 / 80 items, its 10 layers x 14 strengths, absolute units) run end to end by
   ``run_task`` with every control (each strength's negation in the sweep, 16 random directions and the
   negation at test, ICL, ICL + steering), steering the last prompt token as the reference does (``--positions
   search`` adds steerlab's default search of answer and turn positions at the chosen layer; without a chat
   template the turn is the whole prompt, so that search replays every prompt token above the layer for every
   strength, and costs about twice the grid). Each phase's seconds come from
   the report's timings. For the unsteered phases a plain batched forward over the same prompts (length-
   sorted batches, last-position logits only) is timed right after, so each line reads "this phase / a
   plain forward over its tokens".
1b. Only with ``--reference DIR``, a local checkout of github.com/Sasha-Cui/Painless_Activation_Steering
   (commit 95c0858) that the user fetched; nothing of it is copied here. Right after part 1, on part 1's
   model object, items and splits, on CPU, the reference's own functions are timed: ``predict_mcq_letters``
   on the training items; ``evaluate_with_steering`` unsteered on the validation and test items;
   ``SteeringVectorBuilder.build_iBAS_wrong_only`` (ipas-wo) and ``build_BAS_full_mcq`` (pas-full) at
   ``--reference-layers`` of the layers; ``evaluate_with_steering`` on the validation items at those layers x
   ``--reference-strengths`` of the strengths, and on the test items at the sub-grid's best point per
   method. The prompts are the reference's own (its ``BenchmarkLoader._format_mc_question`` on our items).
   The vectors (mean seconds a layer x all layers) and the validation sweep (mean seconds a point x all
   points) are scaled to the full workload; the test vectors, which the reference rebuilds, count the
   build time measured at the chosen layer; the rest is run in full. The extrapolated total is printed
   beside part 1's measured total, with their ratio. The modules are imported from DIR, put first on
   ``sys.path``. Packages that ``preambles.py`` imports but the timed functions never call, where not
   installed, are replaced by stub modules in ``sys.modules``. ``benchmark_loading_functions.py`` fails at
   import at 95c0858 (its ``benchmark_map`` names ``PIQA``, never defined), so only its ``BenchmarkLoader``
   class is executed, from the file's text. The output says which of these it did.
2. The choice-likelihood sweep (``--sweep-items`` validation items, the same 10 layers x 14 strengths at
   ``+s`` and ``-s``, answer positions) beside one plain choice-likelihood pass, and its floor: the points
   times the tokens each point must recompute (the answer chunk, through the blocks above its layer), as a
   multiple of the plain pass's tokens times all blocks; and the same floor with the LM head, which both the
   sweep and the plain pass apply to every scored token (on the embedded model the head costs as much as 8
   blocks a token, so the blocks-only floor is one no exact scorer can reach).

    . .venv/bin/activate && python benchmarks/pas_pipeline.py --threads 2
    . .venv/bin/activate && python benchmarks/pas_pipeline.py --threads 2 \
        --reference ~/Painless_Activation_Steering

``--quick`` shrinks every part, for a smoke run (the reference's sub-grid defaults to 1 layer x 1 strength
there). ``peer-measurements.md`` in the research notes has the reference's cost on this workload as
measured end to end earlier."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import io
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from steerlab.data.items import MCItem, Splits, shuffle_choices, split_items
from steerlab.data.prompts import PromptStyle
from steerlab.data.tasks import load_task
from steerlab.experiment.config import RunConfig
from steerlab.experiment.runner import run_task
from steerlab.methods.pas import TaskFormat, build_vector, scored_item
from steerlab.models import decoder_blocks, load_model, num_layers
from steerlab.runtime.scoring import ChoiceQuestion, choice_logprobs, letter_logprobs, letter_token_ids
from steerlab.runtime.sweep import ScoredItem, Scorer, predictions, score_pushes

from common import load_line, setup, table, timed

TASK = "caa/survival-instinct"
LAYERS = (8, 11, 13, 14, 15, 16, 17, 19, 22, 25)
STRENGTHS = (0.25, 0.5, 0.75, 1.0, 4.0, 7.0, 10.0, 13.0, 16.0, 19.0, 22.0, 25.0, 28.0, 32.0)


def tokens(scored: list[ScoredItem]) -> int:
    return sum(len(s.prefix) + sum(map(len, s.chunks)) for s in scored)


@dataclasses.dataclass(frozen=True)
class Part1:
    rows: list[list[str]]
    total: float  # wall seconds of run_task, model loaded
    timings: dict[str, float]  # the report's seconds per phase
    splits: Splits  # the items the run scored, choices shuffled as it shuffled them


def pipeline(model: torch.nn.Module, tok: object, config: RunConfig) -> Part1:
    items = load_task(TASK)
    result, total = timed(lambda: run_task(model, tok, items, config))  # type: ignore[arg-type]
    timings = result.report.timings
    # The same splits and prompts the run scored, for the plain forward over the same tokens.
    splits = split_items([shuffle_choices(i, config.seed) for i in items], config.n_train, config.n_val,
                         config.n_test, config.seed)
    fmt = TaskFormat("letters", PromptStyle(chat=False), positions="last_prompt")
    letters = letter_token_ids(tok, ["A", "B"])  # type: ignore[arg-type]

    def plain(split: list[object]) -> tuple[float, int]:
        scored = [scored_item(tok, item, fmt) for item in split]  # type: ignore[arg-type]
        prompts = [list(s.prefix) + list(s.chunks[0]) for s in scored]
        _, t = timed(lambda: letter_logprobs(model, prompts, letters, batch_size=config.batch_size))
        return t.wall, tokens(scored)

    train_test = [plain(splits.train), plain(splits.test)]
    base_plain, base_tokens = sum(t for t, _ in train_test), sum(n for _, n in train_test)
    val_plain, val_tokens = plain(splits.val)
    rows = []
    unsteered = (("baseline", base_plain, base_tokens), ("val_unsteered_pass", val_plain, val_tokens))
    for phase, plain_s, n in unsteered:
        rows.append([phase, f"{timings[phase]:.1f}", f"{n}", f"{n / timings[phase]:.0f}", f"{plain_s:.1f}",
                     f"{timings[phase] / plain_s:.2f}"])
    for phase in ("vectors", "sweep", "test", "controls"):
        rows.append([phase, f"{timings.get(phase, 0.0):.1f}", "", "", "",
                     f"{timings.get(phase, 0.0) / val_plain:.1f} val passes"])
    rows.append(["total (wall, model loaded)", f"{total.wall:.1f}", "", "", "", ""])
    return Part1(rows, total.wall, dict(timings), splits)


# The PAS reference code (part 1b), imported from a checkout the user fetched. Nothing of it is copied here.

REFERENCE_BUILDERS = {"ipas-wo": "build_iBAS_wrong_only", "pas-full": "build_BAS_full_mcq"}
REFERENCE_FILES = ("preambles.py", "util.py", "model_prediction.py", "build_steer_vectors_functions.py",
                   "benchmark_loading_functions.py")
# Imported by the reference's preambles.py, never called by the functions timed here: stubbed where absent.
REFERENCE_OPTIONAL = ("matplotlib", "matplotlib.pyplot", "seaborn", "datasets", "huggingface_hub", "yaml",
                      "jsonlines")


@dataclasses.dataclass(frozen=True)
class Reference:
    predict: Callable[..., list[str]]  # model_prediction.predict_mcq_letters
    evaluate: Callable[..., Any]  # model_prediction.evaluate_with_steering
    builder: Callable[..., Any]  # build_steer_vectors_functions.SteeringVectorBuilder
    loader: Callable[..., Any]  # benchmark_loading_functions.BenchmarkLoader
    pandas: Any  # the pandas module its functions use
    notes: list[str]  # how it was imported


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _stub(name: str) -> types.ModuleType:
    """A module whose every attribute is a function that raises: enough for ``from name import x``."""
    module = types.ModuleType(name, "stub installed by benchmarks/pas_pipeline.py (package not installed)")

    def attribute(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)

        def missing(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{name}.{attr} is a stub: the package is not installed")
        return missing

    module.__getattr__ = attribute  # type: ignore[method-assign]
    return module


def _class_from_file(path: Path, name: str, namespace: dict[str, Any]) -> Any:
    """Execute only the definition of class ``name`` from the file's text, in a copy of ``namespace``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    body: list[ast.stmt] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    if not body:
        raise SystemExit(f"--reference: no class {name} in {path}")
    scope = {**namespace, "__name__": path.stem}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec", dont_inherit=True), scope)
    return scope[name]


def import_reference(directory: Path) -> Reference:
    missing = [f for f in REFERENCE_FILES if not (directory / f).is_file()]
    if missing:
        raise SystemExit(f"--reference {directory}: not a checkout of the PAS reference code "
                         f"(no {', '.join(missing)})")
    notes = []
    stubbed = [name for name in REFERENCE_OPTIONAL if name not in sys.modules and not _installed(name)]
    for name in stubbed:
        sys.modules[name] = _stub(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
    notes.append("stubbed in sys.modules (imported by preambles.py, not installed here, never called by the "
                 f"timed functions): {', '.join(stubbed)}" if stubbed
                 else "nothing stubbed: every package preambles.py imports is installed")
    sys.path.insert(0, str(directory))
    modules = {}
    for name in ("preambles", "util", "model_prediction", "build_steer_vectors_functions"):
        module = importlib.import_module(name)
        if Path(module.__file__ or "").resolve().parent != directory.resolve():
            raise SystemExit(f"--reference: module {name} came from {module.__file__}, not from {directory}")
        modules[name] = module
    notes.append("model_prediction and build_steer_vectors_functions imported as they are")
    try:
        loader = importlib.import_module("benchmark_loading_functions").BenchmarkLoader
        notes.append("benchmark_loading_functions imported as it is")
    except Exception as exc:  # at 95c0858 a NameError: its benchmark_map names PIQA, a class never defined
        sys.modules.pop("benchmark_loading_functions", None)
        loader = _class_from_file(directory / "benchmark_loading_functions.py", "BenchmarkLoader",
                                  vars(modules["preambles"]))
        notes.append(f"benchmark_loading_functions.py fails at import ({type(exc).__name__}: {exc}): "
                     "only its BenchmarkLoader class was executed, from the file's text, among preambles' "
                     "names")
    prediction, vectors = modules["model_prediction"], modules["build_steer_vectors_functions"]
    return Reference(prediction.predict_mcq_letters, prediction.evaluate_with_steering,
                     vectors.SteeringVectorBuilder, loader, prediction.pd, notes)


def reference_frame(ref: Reference, items: list[MCItem], seed: int) -> Any:
    """The DataFrame the reference's functions read, each row made by its own ``_format_mc_question``."""
    loader = ref.loader(seed=seed)
    return ref.pandas.DataFrame([loader._format_mc_question(i.question, list(i.choices), i.answer, i.context)
                                 for i in items])


def spread(values: tuple[Any, ...], n: int) -> tuple[Any, ...]:
    """``n`` of ``values``, evenly spaced (the middle one for n = 1)."""
    if n >= len(values):
        return values
    if n == 1:
        return (values[len(values) // 2],)
    return tuple(values[round(k * (len(values) - 1) / (n - 1))] for k in range(n))


@dataclasses.dataclass(frozen=True)
class ReferenceResult:
    rows: list[list[str]]
    timed: float  # seconds its timed calls took
    total: float  # extrapolated to the full workload
    per_item: float  # seconds of one unsteered letter prediction (its training-item predictions)
    lines: list[str]


def reference_part(ref: Reference, model: torch.nn.Module, tok: object, config: RunConfig, splits: Splits,
                   n_layers: int, n_strengths: int) -> ReferenceResult:
    """Time the reference's own functions on a sub-grid of part 1's workload; scale to the full workload."""
    pd, cpu = ref.pandas, "cpu"
    train, val, test = (reference_frame(ref, s, config.seed) for s in (splits.train, splits.val, splits.test))
    all_layers, all_strengths, methods = tuple(config.layers or ()), config.strength_grid, config.methods
    # Its order: layers from the deepest; at each the vectors, then strengths x methods on the validation set.
    layers = tuple(sorted(spread(all_layers, n_layers), reverse=True))
    strengths = spread(all_strengths, n_strengths)
    train_letters, t_train = timed(functools.partial(ref.predict, train, model, tok, device=cpu))
    predictions = pd.Series(train_letters, index=train.index)
    wrong = int((predictions != train["correct_letter"]).sum())
    val_acc, t_val = timed(functools.partial(ref.evaluate, model, tok, val, None, 1.0, 15, device=cpu))
    build: dict[tuple[str, int], float] = {}
    vectors: dict[tuple[str, int], torch.Tensor] = {}
    sweep: dict[str, list[float]] = {m: [] for m in methods}
    best: dict[str, tuple[float, int, float]] = {}
    for layer in layers:
        builder = ref.builder(model=model, tok=tok, layer=layer, steer_target="residual", token_mode="last",
                              device=cpu)
        for m in methods:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per vector built
                vectors[m, layer], t = timed(functools.partial(getattr(builder, REFERENCE_BUILDERS[m]), train,
                                                               predictions))
            build[m, layer] = t.wall
        for strength in strengths:
            for m in methods:
                acc, t = timed(functools.partial(ref.evaluate, model, tok, val, vectors[m, layer], strength,
                                                 layer, "residual", device=cpu))
                sweep[m].append(t.wall)
                if m not in best or acc > best[m][0]:  # its rule: the first maximum of validation accuracy
                    best[m] = (acc, layer, strength)
    test_acc, t_test = timed(functools.partial(ref.evaluate, model, tok, test, None, 1.0, 15, device=cpu))
    test_steered = {}
    for m in methods:
        _, layer, strength = best[m]
        test_steered[m] = timed(functools.partial(ref.evaluate, model, tok, test, vectors[m, layer], strength,
                                                  layer, "residual", device=cpu))

    n_l, n_s, sub = len(all_layers), len(all_strengths), f"{len(layers)} x {len(strengths)}"
    rows = [["train predictions", f"predict_mcq_letters, {len(train)} items", "all", f"{t_train.wall:.1f}",
             "x 1", f"{t_train.wall:.1f}"],
            ["validation, unsteered", f"evaluate_with_steering(steer=None), {len(val)} items", "all",
             f"{t_val.wall:.1f}", "x 1", f"{t_val.wall:.1f}"]]
    prompts = {"ipas-wo": f"2 x {wrong} prompts", "pas-full": f"{len(train)} prompts"}
    full = t_train.wall + t_val.wall
    for m in methods:
        seconds = [build[m, layer] for layer in layers]
        scaled = sum(seconds) / len(seconds) * n_l
        full += scaled
        rows.append([f"{m} vectors", f"{REFERENCE_BUILDERS[m]}, {prompts[m]} a layer",
                     f"{len(layers)} of {n_l} layers", f"{sum(seconds):.1f}", f"mean a layer x {n_l}",
                     f"{scaled:.1f}"])
    for m in methods:
        scaled = sum(sweep[m]) / len(sweep[m]) * n_l * n_s
        full += scaled
        rows.append([f"{m} validation sweep", f"evaluate_with_steering, {len(val)} items a point",
                     f"{sub} of {n_l} x {n_s} points", f"{sum(sweep[m]):.1f}", f"mean a point x {n_l * n_s}",
                     f"{scaled:.1f}"])
    for m in methods:
        _, layer, strength = best[m]
        full += build[m, layer]
        rows.append([f"{m} vector rebuilt for test", f"{REFERENCE_BUILDERS[m]} at layer {layer}", "not rerun",
                     "", f"= its build at layer {layer}", f"{build[m, layer]:.1f}"])
    rows.append(["test, unsteered", f"evaluate_with_steering(steer=None), {len(test)} items", "all",
                 f"{t_test.wall:.1f}", "x 1", f"{t_test.wall:.1f}"])
    full += t_test.wall
    for m in methods:
        _, layer, strength = best[m]
        seconds_m = test_steered[m][1].wall
        full += seconds_m
        rows.append([f"test, {m}", f"evaluate_with_steering, {len(test)} items, layer {layer} strength "
                     f"{strength}", "all", f"{seconds_m:.1f}", "x 1", f"{seconds_m:.1f}"])
    timed_total = (t_train.wall + t_val.wall + sum(build.values()) + sum(map(sum, sweep.values()))
                   + t_test.wall + sum(t.wall for _, t in test_steered.values()))
    rows.append(["total (wall)", "", "", f"{timed_total:.1f}", "", f"{full:.1f}"])
    picks = ", ".join(f"{m} layer {best[m][1]} strength {best[m][2]} (val {best[m][0]:.1%}, test "
                      f"{test_steered[m][0]:.1%})" for m in methods)
    lines = [f"sub-grid: layers {list(layers)} x strengths {list(strengths)}; the first maximum of "
             "validation accuracy per method goes to the test items",
             f"its accuracies: unsteered val {val_acc:.1%}, test {test_acc:.1%}; sub-grid picks: {picks}",
             "Scaled: the vectors (mean seconds a layer x all layers) and the validation sweep (mean seconds "
             "a point x all points). Every forward of the reference runs all blocks whatever layer it reads "
             "or steers, so a layer's or a point's cost does not depend on which it is. The test vectors, "
             "which the reference rebuilds, are counted at the build time measured at the chosen layer. "
             "Everything else was run in full."]
    return ReferenceResult(rows, timed_total, full, t_train.wall / len(train), lines)


def likelihood_sweep(model: torch.nn.Module, tok: object, n_items: int, layers: tuple[int, ...],
                     strengths: tuple[float, ...]) -> tuple[list[list[str]], float, float]:
    items = [shuffle_choices(i, 0) for i in load_task(TASK)]
    train, val = items[:64], items[-n_items:]
    fmt = TaskFormat("likelihood", PromptStyle(), positions="answer")
    train_scored = [scored_item(tok, i, fmt) for i in train]  # type: ignore[arg-type]
    base = score_pushes(model, train_scored, Scorer(), {})
    vector = build_vector(model, tok, "ipas-wo", train, predictions(base.baseline), list(layers),  # type: ignore[arg-type]
                          style=fmt.style, scoring="likelihood")
    scored = [scored_item(tok, i, fmt) for i in val]  # type: ignore[arg-type]
    questions = [ChoiceQuestion((*s.prefix, s.chunks[0][0]), tuple(c[1:] for c in s.chunks)) for s in scored]
    signs = torch.tensor([*strengths, *(-s for s in strengths)])[:, None]
    pushes = {layer: signs * vector.layers[layer] for layer in layers}
    _, plain = timed(lambda: choice_logprobs(model, questions))
    _, sweep = timed(lambda: score_pushes(model, scored, Scorer(), pushes))
    depth = num_layers(model)
    chunk_tokens = sum(sum(map(len, s.chunks)) for s in scored)
    scored_tokens = sum(len(c) - 1 for s in scored for c in s.chunks)  # each predicts one choice token
    # What a point must recompute: every answer chunk through the blocks above its layer; a plain pass
    # computes every token through every block.
    above = sum(len(signs) * chunk_tokens * (depth - 1 - layer) for layer in layers)
    floor = above / (tokens(scored) * depth)
    # Both also unembed every scored token, and on a small model that is not small: the head's multiply-adds
    # per token, in blocks (the 2-D weights of one block), measured on this model.
    head = head_in_blocks(model)
    points = len(layers) * len(signs)
    floor_head = ((above + points * scored_tokens * head) / (tokens(scored) * depth + scored_tokens * head))
    measured = sweep.wall / plain.wall
    what = f"{len(layers)} layers x {len(strengths)} strengths x 2 signs = {points}"
    rows = [["one plain choice-likelihood pass", f"{plain.wall:.1f}", "1.00", "", ""],
            [f"sweep: {what} points, its unsteered pass included", f"{sweep.wall:.1f}", f"{measured:.1f}",
             f"{measured / floor:.2f}", f"{measured / floor_head:.2f}"],
            ["floor: answer chunks through the blocks above each layer", "", f"{floor:.1f}", "1.00", ""],
            [f"floor with the LM head on the {scored_tokens} scored tokens (head = {head:.1f} blocks)", "",
             f"{floor_head:.1f}", "", "1.00"]]
    return rows, measured / floor, measured / floor_head


def head_in_blocks(model: torch.nn.Module) -> float:
    """The LM head's multiply-adds per token over one decoder block's (the 2-D weights of each)."""
    block = decoder_blocks(model)[0]
    per_block = sum(p.numel() for p in block.parameters() if p.ndim == 2)
    return float(model.get_output_embeddings().weight.numel()) / per_block


def workload(args: argparse.Namespace, model: torch.nn.Module, tok: object, config: RunConfig,
             reference: Reference | None, ref_layers: int, ref_strengths: int) -> None:
    """Part 1, and 1b with a reference checkout: the PAS reference's workload, printed phase by phase."""
    sizes = f"{config.n_train}/{config.n_val}/{config.n_test} items"
    grid = f"{len(config.layers or ())} layers x {len(config.strength_grid)} strengths"
    methods = ", ".join(config.methods)
    print(f"1. {TASK}, methods {methods}, {sizes}, {grid}, letters, no chat template, positions "
          f"{args.positions}", flush=True)
    part1 = pipeline(model, tok, config)
    print(table(["phase", "seconds", "tokens", "tokens/s", "plain forward s", "x plain"], part1.rows),
          flush=True)
    if reference is not None:
        print(f"\n1b. The PAS reference code ({args.reference}) on part 1's model, items and splits, on CPU",
              flush=True)
        for note in reference.notes:
            print(f"  import: {note}")
        print(load_line("before it", args.threads), flush=True)
        ref = reference_part(reference, model, tok, config, part1.splits, ref_layers, ref_strengths)
        print(table(["piece", "its function", "timed", "seconds timed", "scaled", "seconds, full workload"],
                    ref.rows))
        for line in ref.lines:
            print(line)
        controls = part1.timings.get("controls", 0.0)
        print(f"\nThe full workload ({sizes}, {grid}, {methods}):")
        print(f"  PAS reference, extrapolated from {ref.timed:.1f} s timed: {ref.total:.1f} s")
        print(f"  steerlab run_task, measured in part 1: {part1.total:.1f} s; it also runs each strength's "
              f"negation and the controls ({controls:.1f} s)")
        print(f"  reference / steerlab: {ref.total / part1.total:.1f}x; against steerlab without its "
              f"controls phase ({part1.total - controls:.1f} s): {ref.total / (part1.total - controls):.1f}x")
        ours = part1.timings["baseline"] / (len(part1.splits.train) + len(part1.splits.test))
        print(f"  one unsteered letter prediction: reference {ref.per_item * 1000:.0f} ms an item (one full "
              f"forward at batch 1, training items), steerlab {ours * 1000:.0f} ms an item (its baseline "
              "phase, training and test items)")
        print(load_line("after it", args.threads), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep-items", type=int, default=200, help="0: skip part 2")
    parser.add_argument("--skip-workload", action="store_true", help="skip part 1 (and 1b)")
    parser.add_argument("--positions", default="last_prompt",
                        help="steered positions searched in part 1: comma-separated, or 'search' for "
                             "steerlab run's default (last_prompt, answer, turn); default: the reference's, "
                             "last_prompt")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="a local checkout of github.com/Sasha-Cui/Painless_Activation_Steering "
                             "(95c0858): time its own functions on part 1's workload (part 1b)")
    parser.add_argument("--reference-layers", type=int, metavar="N",
                        help="layers the reference is timed at (default 2; 1 with --quick)")
    parser.add_argument("--reference-strengths", type=int, metavar="N",
                        help="strengths the reference is timed at (default 2; 1 with --quick)")
    args = parser.parse_args()
    default_sub = 1 if args.quick else 2
    ref_layers = args.reference_layers if args.reference_layers is not None else default_sub
    ref_strengths = args.reference_strengths if args.reference_strengths is not None else default_sub
    if min(ref_layers, ref_strengths) < 1:
        parser.error("--reference-layers and --reference-strengths must be at least 1")
    if args.skip_workload and args.reference is not None:
        parser.error("--reference times the reference on part 1's workload: leave out --skip-workload")
    setup(args.threads)
    # Imported first, so that a wrong DIR fails before part 1's minutes.
    reference = import_reference(args.reference.expanduser()) if args.reference is not None else None
    print(load_line("at start", args.threads), flush=True)
    model, tok = load_model()
    config = RunConfig(task=TASK, methods=("ipas-wo", "pas-full"), layers=LAYERS, strengths=STRENGTHS,
                       unit="absolute", scoring="letters", chat=False, n_train=240, n_val=80, n_test=80,
                       positions=None if args.positions == "search" else tuple(args.positions.split(",")))
    layers, strengths, n_sweep = LAYERS, STRENGTHS, args.sweep_items
    if args.quick:
        config = dataclasses.replace(config, layers=LAYERS[:2], strengths=STRENGTHS[:2], n_train=48, n_val=16,
                                     n_test=16, random_directions=4)
        layers, strengths, n_sweep = LAYERS[:2], STRENGTHS[:2], 16
    if not args.skip_workload:
        workload(args, model, tok, config, reference, ref_layers, ref_strengths)
    if n_sweep == 0:
        print(load_line("at end", args.threads))
        return
    print(f"\n2. Choice-likelihood sweep on {n_sweep} validation items, answer positions", flush=True)
    rows, ratio, ratio_head = likelihood_sweep(model, tok, n_sweep, layers, strengths)
    print(table(["what", "seconds", "x plain pass", "x floor (blocks)", "x floor (blocks + head)"], rows))
    print(f"\nThe sweep costs {ratio:.2f}x its floor in blocks, {ratio_head:.2f}x with the LM head.")
    print(load_line("at end", args.threads))


if __name__ == "__main__":
    main()
