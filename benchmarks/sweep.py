"""The layer x strength sweep of ``steerlab run``, against a plain pass and against the straightforward sweep.

Issue 3's benchmark. On the embedded model and a real task (validation-sized slice, choices shuffled per
item as ``steerlab run`` does), with last-token steering under letter scoring (the paper's set-up):

(a) one plain unsteered validation pass: ``runtime.scoring.letter_logprobs`` over the full prompts (one
    forward, last-position logits only); also ``score_grid`` with no vector, which is what ``steerlab run``
    times as ``val_unsteered_pass``;
(b) ``steerlab.runtime.sweep.score_grid`` over 10 layers x 14 strengths (it includes its own unsteered pass);
(c) the straightforward sweep: for each grid point a full forward with a steering hook
    (``apply_steering(..., layers=[L], positions="last_prompt")`` around ``letter_logprobs``). Only a few grid
    points are timed; the full grid's time is extrapolated linearly (every point costs the same full forward).

The sweep's scores are checked against the straightforward ones on the timed points (max abs difference of the
per-choice scores). With ``--scoring likelihood`` the steered positions are the answer-predicting tokens
(``positions="answer"`` around ``choice_logprobs``) instead.

    . .venv/bin/activate && python benchmarks/sweep.py
"""

from __future__ import annotations

import argparse
from typing import Any

from steerlab.core.hooks import apply_steering
from steerlab.data.items import shuffle_choices
from steerlab.data.prompts import PromptStyle
from steerlab.data.tasks import load_caa_pairs, load_task
from steerlab.experiment.config import default_sweep_layers
from steerlab.methods.pas import TaskFormat, scored_item
from steerlab.methods.train import train_vector
from steerlab.models import load_model, num_layers
from steerlab.runtime.scoring import ChoiceQuestion, choice_logprobs, letter_logprobs, letter_token_ids
from steerlab.runtime.sweep import Scorer, score_grid

from common import Timing, load_line, median, setup, table, timed

STRENGTHS = (-16.0, -12.0, -8.0, -4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="caa/survival-instinct", help="built-in task (e.g. mmlu)")
    parser.add_argument("--items", type=int, default=64, help="validation items")
    parser.add_argument("--scoring", default="letters", choices=("letters", "likelihood"))
    parser.add_argument("--layers", default=None, help="comma-separated; default: steerlab run's 10 layers")
    parser.add_argument("--strengths", default=",".join(str(s) for s in STRENGTHS))
    parser.add_argument("--batch-size", type=int, default=8, help="items per batch (steerlab run's default)")
    parser.add_argument(
        "--direct-points",
        type=int,
        default=4,
        help="grid points timed with the straightforward sweep (then extrapolated)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of (a) and (b) (median)")
    parser.add_argument(
        "--vector-pairs",
        type=int,
        default=64,
        help="survival-instinct pairs for the mean-diff vector that is swept",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    print(load_line("at start", args.threads), flush=True)

    model, tok = load_model()
    depth = num_layers(model)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else default_sweep_layers(depth)
    strengths = [float(x) for x in args.strengths.split(",")]
    items = [shuffle_choices(item, 0) for item in load_task(args.task)][-args.items :]
    fmt = TaskFormat(scoring=args.scoring, style=PromptStyle())
    scored = [scored_item(tok, item, fmt) for item in items]
    width = max(len(item.choices) for item in items)
    letter_ids = [tuple(ids) for ids in letter_token_ids(tok, [chr(65 + k) for k in range(width)])]
    scorer = Scorer(tuple(letter_ids) if args.scoring == "letters" else None)
    vector = train_vector(model, tok, load_caa_pairs("survival-instinct")[: args.vector_pairs], layers)
    prompts = [list(s.prefix) + list(s.chunks[0]) for s in scored]
    questions = (
        []
        if args.scoring == "letters"
        else [ChoiceQuestion((*s.prefix, s.chunks[0][0]), tuple(c[1:] for c in s.chunks)) for s in scored]
    )
    tokens = (
        sum(map(len, prompts))
        if args.scoring == "letters"
        else sum(len(q.prompt) + sum(map(len, q.choices)) for q in questions)
    )

    def plain() -> list[list[float]]:
        if args.scoring == "letters":
            return [
                list(map(float, row))
                for row in letter_logprobs(model, prompts, letter_ids, batch_size=args.batch_size)
            ]
        return choice_logprobs(model, questions, batch_size=args.batch_size)

    def baseline_only() -> Any:
        return score_grid(model, scored, scorer, batch_size=args.batch_size)

    def sweep() -> Any:
        return score_grid(model, scored, scorer, vector, layers, strengths, batch_size=args.batch_size)

    plain()  # warm-up
    runs: dict[str, list[Timing]] = {"plain": [], "baseline": [], "sweep": []}
    plain_scores: list[list[float]] = []
    grid: Any = None
    for r in range(args.repeats):
        plain_scores, t = timed(plain)
        runs["plain"].append(t)
        _, t = timed(baseline_only)
        runs["baseline"].append(t)
        grid, t = timed(sweep)
        runs["sweep"].append(t)
        print(
            f"repeat {r + 1}: plain {runs['plain'][-1].wall:.2f}s, score_grid unsteered "
            f"{runs['baseline'][-1].wall:.2f}s, sweep {t.wall:.2f}s",
            flush=True,
        )

    # The straightforward sweep on a few grid points, spread over layers and strengths.
    k = max(1, min(args.direct_points, len(layers) * len(strengths)))
    points = [
        (layers[round(i * (len(layers) - 1) / max(1, k - 1))], strengths[round((i * 5 + 3) % len(strengths))])
        for i in range(k)
    ]
    direct: list[Timing] = []
    worst = 0.0
    positions = "last_prompt" if args.scoring == "letters" else "answer"
    for layer, strength in points:
        with apply_steering(model, vector, strength, layers=[layer], positions=positions):
            scores, t = timed(plain)
        direct.append(t)
        swept = grid.grid[(layer, strength)]
        diff = max(
            abs(a - b)
            for row_a, row_b in zip(scores, swept, strict=True)
            for a, b in zip(row_a, row_b, strict=True)
        )
        worst = max(worst, diff)
        print(
            f"straightforward point layer {layer} strength {strength:+g}: {t.wall:.2f}s, "
            f"max |sweep - straightforward| {diff:.2e}",
            flush=True,
        )
    baseline_diff = max(
        abs(a - b)
        for row_a, row_b in zip(plain_scores, grid.baseline, strict=True)
        for a, b in zip(row_a, row_b, strict=True)
    )

    n_points = len(layers) * len(strengths)
    t_plain = median([t.wall for t in runs["plain"]])
    t_base = median([t.wall for t in runs["baseline"]])
    t_sweep = median([t.wall for t in runs["sweep"]])
    t_point = median([t.wall for t in direct])
    t_direct = t_point * n_points
    c_plain = median([t.cpu for t in runs["plain"]])
    c_sweep = median([t.cpu for t in runs["sweep"]])
    c_direct = median([t.cpu for t in direct]) * n_points
    print()
    print(
        f"Sweep benchmark: {args.task}, {len(items)} items ({tokens} tokens), {args.scoring} scoring, "
        f"{'last-token' if args.scoring == 'letters' else 'answer-token'} steering, "
        f"{len(layers)} layers {layers} x {len(strengths)} strengths = {n_points} grid points, "
        f"batch {args.batch_size}, {args.threads} threads"
    )
    rows = [
        [
            "(a) plain unsteered pass (letter_logprobs / choice_logprobs)",
            f"{t_plain:.2f}",
            f"{c_plain:.2f}",
            "1.00",
        ],
        [
            "(a') score_grid, no vector (run.py's val_unsteered_pass)",
            f"{t_base:.2f}",
            f"{median([t.cpu for t in runs['baseline']]):.2f}",
            f"{t_base / t_plain:.2f}",
        ],
        [
            f"(b) score_grid sweep, {n_points} points (incl. its unsteered pass)",
            f"{t_sweep:.2f}",
            f"{c_sweep:.2f}",
            f"{t_sweep / t_plain:.2f}",
        ],
        [
            f"(c) straightforward sweep, {n_points} x full forward (extrapolated from {k} points, "
            f"{t_point:.2f} s each)",
            f"{t_direct:.1f}",
            f"{c_direct:.1f}",
            f"{t_direct / t_plain:.1f}",
        ],
    ]
    print(table(["what", "wall s", "cpu s", "x plain pass"], rows))
    ratio_plain, ratio_direct = t_sweep / t_plain, t_direct / t_sweep
    print(
        f"\nsweep / plain pass: {ratio_plain:.2f}x wall, {c_sweep / c_plain:.2f}x cpu "
        f"(target <= 2x: {'MET' if ratio_plain <= 2 else 'NOT MET'})"
    )
    print(
        f"straightforward / sweep: {ratio_direct:.1f}x wall, {c_direct / c_sweep:.1f}x cpu "
        f"(target >= 20x: {'MET' if ratio_direct >= 20 else 'NOT MET'})"
    )
    print(
        f"agreement on the {k} timed points: max |sweep - straightforward| = {worst:.2e} "
        f"(per-choice {'letter log-probs' if args.scoring == 'letters' else 'log-likelihoods'}); "
        f"unsteered: max |score_grid - plain| = {baseline_diff:.2e}"
    )
    print(load_line("at end", args.threads))


if __name__ == "__main__":
    main()
