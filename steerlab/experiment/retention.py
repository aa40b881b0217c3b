"""What a chosen steering costs: accuracy on a knowledge task it was not selected on, and coherence on neutral text.

The steering is applied exactly as selected (the vector's recipe: layers, strength, positions). Two measurements:

- **knowledge**: the same items scored unsteered and steered (the run's scoring, the same replay as the PAS test),
  the paired per-item difference with its bootstrap interval;
- **coherence**: for neutral everyday requests, the unsteered model's own greedy answer is read back unsteered and
  steered; per answer token, the KL divergence KL(unsteered || steered) of the next-token distributions, and the
  negative log-likelihood of the answer under each (perplexity = exp of its mean per token). A steering that keeps
  the model fluent leaves both nearly unchanged.

Example::

    from steerlab import load_model, load_task
    from steerlab.core.vector import SteeringVector
    from steerlab.experiment.retention import measure_retention, summarise
    model, tok = load_model()
    vector = SteeringVector.load("runs/survival/vector.safetensors")   # carries its recipe
    raw = measure_retention(model, tok, vector, load_task("mmlu")[:64])
    print(summarise("mmlu", raw).verdict_text)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.hooks import steer
from steerlab.core.vector import SteeringVector
from steerlab.data.items import MCItem, shuffle_choices
from steerlab.data.prompts import encode_continuation
from steerlab.data.tasks import load_task
from steerlab.errors import ConfigError
from steerlab.experiment.stats import Estimate, correctness, mean, paired_bootstrap
from steerlab.methods.pas import TaskFormat, scored_item
from steerlab.progress import Progress, silent
from steerlab.runtime import batching
from steerlab.runtime.generate import generate
from steerlab.runtime.scoring import letter_token_ids
from steerlab.runtime.sweep import Scorer, score_push_sets
from steerlab.runtime.sweep import predictions as argmax_choices

DEFAULT_TASK = "mmlu"
DEFAULT_ITEMS = 100
NEUTRAL_PROMPTS = 32  # the last lines of steerlab/resources/neutral_prompts.txt (PSR's held-out evaluation prompts)
ANSWER_TOKENS = 24

Cost = Literal["costs accuracy", "no measurable cost", "improves accuracy"]


def neutral_prompts(count: int = NEUTRAL_PROMPTS) -> list[str]:
    text = resources.files("steerlab").joinpath("resources/neutral_prompts.txt").read_text("utf-8")
    lines = [line.strip() for line in text.split("\n") if line.strip() and not line.startswith("#")]
    return lines[-count:]


def parse_spec(spec: str) -> tuple[str, int]:
    """``TASK[:N]`` (``--retain``) as (task, item count); N defaults to `DEFAULT_ITEMS`."""
    task, _, count = spec.partition(":")
    if not task:
        raise ConfigError(f"--retain {spec!r}: expected TASK or TASK:N, e.g. mmlu:200")
    if not count:
        return task, DEFAULT_ITEMS
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--retain {spec!r}: N must be a positive whole number, got {count!r}")
    return task, int(count)


def retention_items(task: str, count: int, seed: int) -> list[MCItem]:
    """``count`` items of a built-in task drawn with ``seed``, each with its choices shuffled as a run does."""
    items = [shuffle_choices(item, seed) for item in load_task(task)]
    return random.Random(seed).sample(items, min(count, len(items)))


def _pushes(vector: SteeringVector) -> dict[tuple[int, ...], dict[int, torch.Tensor]]:
    recipe = vector.recipe
    if recipe is None:
        raise ConfigError("retention needs a vector with a recipe (layers, strength, positions): "
                          "the vectors steerlab run writes carry one")
    return {recipe.layers: {layer: vector.layers[layer][None] * recipe.strength for layer in recipe.layers}}


def knowledge_scores(model: nn.Module, tokenizer: PreTrainedTokenizerBase, vector: SteeringVector,
                     items: Sequence[MCItem], fmt: TaskFormat, *, batch_size: int = 8,
                     progress: Progress = silent) -> tuple[list[int], list[int]]:
    """Predicted choices unsteered and under the vector's recipe (its positions replace ``fmt.positions``)."""
    pushes = _pushes(vector)
    assert vector.recipe is not None
    fmt = replace(fmt, positions=vector.recipe.positions)
    width = max(len(item.choices) for item in items)
    letter_ids = (tuple(tuple(ids) for ids in letter_token_ids(tokenizer, [chr(65 + k) for k in range(width)]))
                  if fmt.scoring == "letters" else None)
    scored = [scored_item(tokenizer, item, fmt) for item in items]
    result = score_push_sets(model, scored, Scorer(letter_ids, fmt.length_normalize), pushes, batch_size=batch_size,
                             progress=progress, what="retention: knowledge task", target=vector.recipe.target)
    return argmax_choices(result.baseline), argmax_choices(result.steered[vector.recipe.layers][0])


@torch.no_grad()
def coherence_scores(model: nn.Module, tokenizer: PreTrainedTokenizerBase, vector: SteeringVector,
                     prompts: Sequence[str], fmt: TaskFormat, *, answer_tokens: int = ANSWER_TOKENS,
                     batch_size: int = 8, progress: Progress = silent) -> dict[str, list[float]]:
    """Per prompt: mean KL(unsteered || steered) over the answer's next-token distributions, mean NLL of the answer
    unsteered and steered (nats per token), and the answer's length. The answer is the unsteered greedy one."""
    assert vector.recipe is not None
    style, templated = fmt.style, fmt.style.templated(tokenizer)
    answers = generate(model, tokenizer, prompts, max_new_tokens=answer_tokens, style=style, batch_size=batch_size)
    rows, starts, turns = [], [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        head = style.render(tokenizer, prompt)
        question, tokens = encode_continuation(tokenizer, head, answer, templated=templated)
        if not tokens:  # an empty answer (immediate end of turn): score the end token itself
            question, tokens = question[:-1], question[-1:]
        rows.append(question + tokens)
        starts.append(len(question))
        turns.append(style.turn_start(tokenizer, prompt))
    out: dict[str, list[float]] = {"kl": [], "nll_unsteered": [], "nll_steered": [], "tokens": []}
    pad = batching.pad_id(model)
    device = next(model.parameters()).device
    for begin in range(0, len(rows), batch_size):
        part = slice(begin, begin + batch_size)
        ids, mask = batching.pad(rows[part], pad, side="right", device=device)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": batching.positions(mask)}
        plain = torch.log_softmax(model(**kwargs).logits.float(), dim=-1)
        turn_starts = turns[part] if vector.recipe.positions == "turn" else None
        with steer(model, vector, prompt_lengths=starts[part], turn_starts=turn_starts):
            steered = torch.log_softmax(model(**kwargs).logits.float(), dim=-1)
        for k, (row, start) in enumerate(zip(rows[part], starts[part], strict=True)):
            where = torch.arange(start - 1, len(row) - 1, device=device)  # positions predicting answer tokens
            targets = torch.tensor(row[start:], device=device)
            p, q = plain[k, where], steered[k, where]
            out["kl"].append(float((p.exp() * (p - q)).sum(-1).mean()))
            out["nll_unsteered"].append(float(-p.gather(-1, targets[:, None]).mean()))
            out["nll_steered"].append(float(-q.gather(-1, targets[:, None]).mean()))
            out["tokens"].append(float(len(targets)))
        progress(min(begin + batch_size, len(rows)), len(rows), "retention: neutral text")
    return out


def measure_retention(model: nn.Module, tokenizer: PreTrainedTokenizerBase, vector: SteeringVector,
                      items: Sequence[MCItem], fmt: TaskFormat | None = None, *,
                      prompts: Sequence[str] | None = None, answer_tokens: int = ANSWER_TOKENS, batch_size: int = 8,
                      progress: Progress = silent) -> dict[str, Any]:
    """The raw measurements (JSON-ready, for a store): per item and per neutral prompt; `summarise` reads them."""
    if not items:
        raise ConfigError("retention needs at least one knowledge item")
    fmt = fmt or TaskFormat()
    baseline, steered = knowledge_scores(model, tokenizer, vector, items, fmt, batch_size=batch_size,
                                         progress=progress)
    coherence = coherence_scores(model, tokenizer, vector, list(prompts or neutral_prompts()), fmt,
                                 answer_tokens=answer_tokens, batch_size=batch_size, progress=progress)
    return {"ids": [item.id for item in items], "baseline": correctness(baseline, items),
            "steered": correctness(steered, items), "scoring": fmt.scoring, "coherence": coherence}


@dataclass(frozen=True)
class Coherence:
    """Neutral requests answered by the unsteered model, read back steered: how far the steering moves the model."""

    prompts: int
    tokens: int
    kl: Estimate  # mean over prompts of the per-token KL(unsteered || steered), nats
    nll_increase: Estimate  # mean over prompts of (steered - unsteered) NLL per answer token, nats
    perplexity_unsteered: float  # exp of the token-weighted mean NLL
    perplexity_steered: float


@dataclass(frozen=True)
class Retention:
    """The chosen steering on a task it was not selected on, unsteered vs steered, and its coherence cost."""

    task: str
    scoring: str
    ids: list[str]
    baseline: list[float]  # per item, 1.0 = correct
    steered: list[float]
    delta: Estimate
    coherence: Coherence

    @property
    def cost(self) -> Cost:
        sign = self.delta.excludes_zero
        return "costs accuracy" if sign < 0 else "improves accuracy" if sign > 0 else "no measurable cost"

    @property
    def verdict_text(self) -> str:
        c = self.coherence
        return (f"on {self.task} ({len(self.ids)} items it was not selected on) accuracy went from "
                f"{mean(self.baseline):.3f} to {mean(self.steered):.3f}, delta {_estimate(self.delta)}: {self.cost}; "
                f"on {c.prompts} neutral requests the next-token distribution moved by KL {_estimate(c.kl, 4)} "
                f"nats/token and the perplexity of the unsteered answers went from {c.perplexity_unsteered:.2f} to "
                f"{c.perplexity_steered:.2f}")

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "scoring": self.scoring, "items": len(self.ids), "cost": self.cost,
                "verdict_text": self.verdict_text,
                "accuracy": {"unsteered": mean(self.baseline), "steered": mean(self.steered)},
                "delta": asdict(self.delta), "coherence": {**asdict(self.coherence)},
                "per_item": {"ids": self.ids, "baseline": self.baseline, "steered": self.steered}}


def _estimate(e: Estimate, digits: int = 3) -> str:
    if e.low is None or e.high is None:
        return f"{e.value:+.{digits}f}"
    return f"{e.value:+.{digits}f} [{e.low:+.{digits}f}, {e.high:+.{digits}f}]"


def summarise(task: str, raw: dict[str, Any]) -> Retention:
    """The typed result of `measure_retention`'s measurements, with intervals (paired bootstrap)."""
    c = raw["coherence"]
    tokens = sum(c["tokens"])

    def perplexity(nll: list[float]) -> float:
        return math.exp(sum(n * t for n, t in zip(nll, c["tokens"], strict=True)) / tokens)

    coherence = Coherence(
        prompts=len(c["kl"]), tokens=int(tokens), kl=paired_bootstrap([c["kl"]]),
        nll_increase=paired_bootstrap([[s - u for s, u in zip(c["nll_steered"], c["nll_unsteered"], strict=True)]]),
        perplexity_unsteered=perplexity(c["nll_unsteered"]), perplexity_steered=perplexity(c["nll_steered"]))
    delta = paired_bootstrap([[s - b for s, b in zip(raw["steered"], raw["baseline"], strict=True)]])
    return Retention(task=task, scoring=raw["scoring"], ids=list(raw["ids"]), baseline=list(raw["baseline"]),
                     steered=list(raw["steered"]), delta=delta, coherence=coherence)


def markdown(summary: dict[str, Any]) -> str:
    """report.md's retention section, from `Retention.summary`."""
    c, acc = summary["coherence"], summary["accuracy"]

    def interval(e: dict[str, Any], digits: int = 3) -> str:
        return _estimate(Estimate(e["value"], e["low"], e["high"]), digits)

    rows = [
        f"| {summary['task']} accuracy ({summary['items']} items, {summary['scoring']}) | {acc['unsteered']:.3f} | "
        f"{acc['steered']:.3f} | {interval(summary['delta'])} |",
        f"| perplexity of the unsteered answers ({c['prompts']} neutral requests, {c['tokens']} tokens) | "
        f"{c['perplexity_unsteered']:.2f} | {c['perplexity_steered']:.2f} | NLL/token "
        f"{interval(c['nll_increase'])} |",
        f"| KL(unsteered \\|\\| steered) per answer token, nats | 0 | {c['kl']['value']:.4f} | "
        f"{interval(c['kl'], 4)} |",
    ]
    return "\n".join([f"**{summary['cost']}**: {summary['verdict_text']}.", "",
                      "| | unsteered | steered | difference [95% CI] |", "|---|---:|---:|---:|", *rows])
