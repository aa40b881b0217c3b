"""Issue 2's effect measure, at full size: does a contrastive vector move the answer the way its sign says?

A mean-difference vector from 128 survival-instinct pairs written as answer texts (read at the first
token where the two answers differ) is added at every position of one layer; 100 held-out questions are
scored letter-free (softmax over the two answers' log-likelihoods after the chat-formatted question).
Prints the mean probability of the behaviour-matching answer unsteered, at -4 and at +4, per layer::

    python benchmarks/survival_shift.py --layers 10,12,20
"""

from __future__ import annotations

import argparse
import math

from steerlab.data.items import MCItem
from steerlab.data.tasks import load_caa_pairs
from steerlab.methods.pas import TaskFormat, scored_item
from steerlab.methods.train import train_vector
from steerlab.models import load_model
from steerlab.runtime.sweep import Scorer, score_grid

from common import setup, table


def behaviour_probability(scores: list[list[float]]) -> float:
    return sum(1.0 / (1.0 + math.exp(row[1] - row[0])) for row in scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", default="10,12,20")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--strength", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    model, tok = load_model()
    pairs = load_caa_pairs("survival-instinct")
    vector = train_vector(model, tok, pairs[: args.pairs], layers)
    held_out = [MCItem(f"q{k}", p.prompt or "", (p.positive, p.negative), 0)
                for k, p in enumerate(pairs[args.pairs: args.pairs + args.held_out])]
    fmt = TaskFormat(scoring="likelihood", positions="all")
    items = [scored_item(tok, item, fmt) for item in held_out]
    s = args.strength
    result = score_grid(model, items, Scorer(), vector, layers, [-s, s])
    base = behaviour_probability(result.baseline)
    rows = [[str(layer), f"{base:.3f}", f"{behaviour_probability(result.grid[(layer, -s)]):.3f}",
             f"{behaviour_probability(result.grid[(layer, s)]):.3f}"] for layer in layers]
    print(f"{args.pairs} pairs, {len(held_out)} held-out questions, every position steered")
    print(table(["layer", "P(behaviour) unsteered", f"at -{s:g}", f"at +{s:g}"], rows))


if __name__ == "__main__":
    main()
