"""The whole ``steerlab run`` job, phase by phase, beside a plain batched forward over the same tokens.

Two parts, in one run, on the embedded model:

1. The PAS reference's workload (``caa/survival-instinct``, ipas-wo and pas-full, letter scoring, no chat
   template, 240 / 80 / 80 items, its 10 layers x 14 strengths, absolute units) run end to end by
   ``run_task`` with every control (each strength's negation in the sweep, 16 random directions and the
   negation at test, ICL, ICL + steering) and the default positions search. Each phase's seconds come from
   the report's timings. For the unsteered phases a plain batched forward over the same prompts (length-
   sorted batches, last-position logits only) is timed right after, so each line reads "this phase / a
   plain forward over its tokens".
2. The choice-likelihood sweep (``--sweep-items`` validation items, the same 10 layers x 14 strengths at
   ``+s`` and ``-s``, answer positions) beside one plain choice-likelihood pass, and its floor: the points
   times the tokens each point must recompute (the answer chunk, through the blocks above its layer), as a
   multiple of the plain pass's tokens times all blocks.

    . .venv/bin/activate && python benchmarks/pas_pipeline.py --threads 2

``--quick`` shrinks both parts (for a smoke run). The PAS reference code itself is not run here: this
machine cannot fetch it; ``peer-measurements.md`` in the research notes has its measured cost on this
workload."""

from __future__ import annotations

import argparse
import dataclasses

import torch
from steerlab.data.items import shuffle_choices, split_items
from steerlab.data.prompts import PromptStyle
from steerlab.data.tasks import load_task
from steerlab.experiment.config import RunConfig
from steerlab.experiment.runner import run_task
from steerlab.methods.pas import TaskFormat, build_vector, scored_item
from steerlab.models import load_model, num_layers
from steerlab.runtime.scoring import ChoiceQuestion, choice_logprobs, letter_logprobs, letter_token_ids
from steerlab.runtime.sweep import ScoredItem, Scorer, predictions, score_pushes

from common import load_line, setup, table, timed

TASK = "caa/survival-instinct"
LAYERS = (8, 11, 13, 14, 15, 16, 17, 19, 22, 25)
STRENGTHS = (0.25, 0.5, 0.75, 1.0, 4.0, 7.0, 10.0, 13.0, 16.0, 19.0, 22.0, 25.0, 28.0, 32.0)


def tokens(scored: list[ScoredItem]) -> int:
    return sum(len(s.prefix) + sum(map(len, s.chunks)) for s in scored)


def pipeline(model: torch.nn.Module, tok: object, config: RunConfig) -> list[list[str]]:
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
    return rows


def likelihood_sweep(model: torch.nn.Module, tok: object, n_items: int, layers: tuple[int, ...],
                     strengths: tuple[float, ...]) -> tuple[list[list[str]], float]:
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
    # What a point must recompute: every answer chunk through the blocks above its layer; a plain pass
    # computes every token through every block.
    above = sum(len(signs) * chunk_tokens * (depth - 1 - layer) for layer in layers)
    floor = above / (tokens(scored) * depth)
    measured = sweep.wall / plain.wall
    points = f"{len(layers)} layers x {len(strengths)} strengths x 2 signs = {len(layers) * len(signs)}"
    rows = [["one plain choice-likelihood pass", f"{plain.wall:.1f}", "1.00", ""],
            [f"sweep: {points} points, its unsteered pass included", f"{sweep.wall:.1f}", f"{measured:.1f}",
             f"{measured / floor:.2f}"],
            ["floor (answer chunks through the blocks above each layer)", "", f"{floor:.1f}", "1.00"]]
    return rows, measured / floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep-items", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    setup(args.threads)
    print(load_line("at start", args.threads), flush=True)
    model, tok = load_model()
    config = RunConfig(task=TASK, methods=("ipas-wo", "pas-full"), layers=LAYERS, strengths=STRENGTHS,
                       unit="absolute", scoring="letters", chat=False, n_train=240, n_val=80, n_test=80)
    layers, strengths, n_sweep = LAYERS, STRENGTHS, args.sweep_items
    if args.quick:
        config = dataclasses.replace(config, layers=LAYERS[:2], strengths=STRENGTHS[:2], n_train=48, n_val=16,
                                     n_test=16, random_directions=4)
        layers, strengths, n_sweep = LAYERS[:2], STRENGTHS[:2], 16
    sizes = f"{config.n_train}/{config.n_val}/{config.n_test} items"
    grid = f"{len(config.layers or ())} layers x {len(config.strength_grid)} strengths"
    methods = ", ".join(config.methods)
    print(f"1. {TASK}, methods {methods}, {sizes}, {grid}, letters, no chat template", flush=True)
    print(table(["phase", "seconds", "tokens", "tokens/s", "plain forward s", "x plain"],
                pipeline(model, tok, config)), flush=True)
    print(f"\n2. Choice-likelihood sweep on {n_sweep} validation items, answer positions", flush=True)
    rows, ratio = likelihood_sweep(model, tok, n_sweep, layers, strengths)
    print(table(["what", "seconds", "x plain pass", "x floor"], rows))
    print(f"\nThe sweep costs {ratio:.2f}x its floor.")
    print(load_line("at end", args.threads))


if __name__ == "__main__":
    main()
