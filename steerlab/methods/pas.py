"""Painless Activation Steering (Cui & Chen, 2025): steering vectors from a labelled multiple-choice dataset.

All four methods start from one unsteered pass over the training split (the model's own answers):

- ``pas-full`` (PASf): full lettered prompts of items answered right, minus those answered wrong (last token);
- ``ipas-all`` (iPASa): "question + correct answer" of items answered right, minus "question + the model's wrong
  answer" of items answered wrong (last token);
- ``ipas-wo`` (iPASwo): only items answered wrong, "question + correct answer" minus "question + the model's own
  wrong answer", as matched pairs (last token);
- ``caa``: CAA's contrast pair, the correct answer minus a wrong one (the next choice), read where the two differ:
  the answer letter under letter scoring (CAA's A/B token), the start of the answer text under choice likelihood,
  where a letter vector has nothing to act on.

Every vector is a plain difference of means, not normalised, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from transformers import PreTrainedTokenizerBase

from steerlab.core.positions import Positions, check_positions
from steerlab.core.vector import SteeringVector
from steerlab.data.items import ContrastPair, MCItem
from steerlab.data.prompts import (
    PromptStyle,
    encode,
    encode_continuation,
    letter_answer,
    lettered_prompt,
    question_text,
)
from steerlab.errors import ConfigError
from steerlab.methods.contrastive import mean_difference
from steerlab.methods.train import pair_group
from steerlab.models import Target, hidden_size, model_name
from steerlab.progress import Progress, silent
from steerlab.runtime.extract import Group, extract, single
from steerlab.runtime.sweep import ScoredItem

PAS_METHODS: tuple[str, ...] = ("pas-full", "ipas-all", "ipas-wo", "caa")
MIN_ITEMS = 2

Scoring = Literal["letters", "likelihood"]


@dataclass(frozen=True)
class TaskFormat:
    """How items are shown to the model and scored, and which positions a steering vector covers."""

    scoring: Scoring = "likelihood"
    style: PromptStyle = PromptStyle()
    length_normalize: bool = False
    positions: Positions = "answer"

    def __post_init__(self) -> None:
        check_positions(self.positions)


def scored_item(tokenizer: PreTrainedTokenizerBase, item: MCItem, fmt: TaskFormat,
                history: Sequence[tuple[str, str]] = ()) -> ScoredItem:
    """Tokenise ``item`` for :func:`steerlab.runtime.sweep.score_pushes`; ``history`` prepends in-context examples.

    The unsteered prefix and the steered chunks follow ``fmt.positions`` (``turn``: the prefix is the system prompt
    and earlier turns, the chunk the user's turn and the answer). Under letter scoring the answer is the letter
    predicted at the last prompt token, so ``answer`` and ``last_prompt`` coincide, as do ``prompt`` and ``all``.
    """
    templated = fmt.style.templated(tokenizer)
    if fmt.scoring == "letters":
        user = lettered_prompt(item.question, item.choices, item.context)
        prompt = encode(tokenizer, fmt.style.render(tokenizer, user, history), templated=templated)
        choices = len(item.choices)
        if fmt.positions in ("prompt", "all"):
            return ScoredItem((), (tuple(prompt),), choices=choices)
        if fmt.positions == "turn":
            turn = fmt.style.turn_start(tokenizer, user, history)
            return ScoredItem(tuple(prompt[:turn]), (tuple(prompt[turn:]),), choices=choices)
        return ScoredItem(tuple(prompt[:-1]), ((prompt[-1],),), choices=choices)
    user = question_text(item.question, item.context)
    head = fmt.style.render(tokenizer, user, history)
    continuations = [encode_continuation(tokenizer, head, choice, templated=templated) for choice in item.choices]
    question = continuations[0][0]
    if any(q != question for q, _ in continuations) or any(not answer for _, answer in continuations):
        question = encode(tokenizer, head, templated=templated)
        continuations = [(question, encode(tokenizer, choice, templated=False)) for choice in item.choices]
    if fmt.positions in ("prompt", "all"):
        return ScoredItem((), tuple(tuple(question + a) for _, a in continuations),
                          tuple(len(question) - 1 for _ in continuations),
                          len(question) if fmt.positions == "prompt" else None)
    if fmt.positions == "turn":
        turn = min(fmt.style.turn_start(tokenizer, user, history), len(question) - 1)
        return ScoredItem(tuple(question[:turn]), tuple(tuple(question[turn:] + a) for _, a in continuations),
                          tuple(len(question) - 1 - turn for _ in continuations))
    return ScoredItem(tuple(question[:-1]), tuple((question[-1], *a) for _, a in continuations),
                      tuple(0 for _ in continuations), 1 if fmt.positions == "last_prompt" else None)


def icl_history(items: Sequence[MCItem], fmt: TaskFormat) -> list[tuple[str, str]]:
    """In-context examples as earlier chat turns: the prompt, then the correct answer as the model would give it."""
    if fmt.scoring == "letters":
        return [(lettered_prompt(i.question, i.choices, i.context), letter_answer(i.answer)) for i in items]
    return [(question_text(i.question, i.context), i.choices[i.answer]) for i in items]


def method_problem(method: str, items: Sequence[MCItem], predicted: Sequence[int]) -> str | None:
    """Why ``method`` cannot run on these baseline answers, or None if it can."""
    if method not in PAS_METHODS:
        return f"unknown method '{method}'; choose one of {', '.join(PAS_METHODS)} or all"
    right = sum(p == i.answer for p, i in zip(predicted, items, strict=True))
    wrong = len(items) - right
    if method in ("pas-full", "ipas-all") and min(right, wrong) < MIN_ITEMS:
        return (f"{method} needs at least {MIN_ITEMS} training items answered right and {MIN_ITEMS} answered wrong; "
                f"the model answered {right} right and {wrong} wrong")
    if method == "ipas-wo" and wrong < MIN_ITEMS:
        return f"ipas-wo needs at least {MIN_ITEMS} training items answered wrong; the model got {wrong} wrong"
    if method == "caa" and len(items) < MIN_ITEMS:
        return f"caa needs at least {MIN_ITEMS} training items"
    return None


def vector_problem(method: str, vector: SteeringVector) -> str | None:
    """Why a built vector cannot steer, or None: a layer where it is exactly zero, because its two sides gave the
    same activations (it has no direction to scale to a strength)."""
    zero = [layer for layer, tensor in vector.layers.items() if not bool(tensor.any())]
    if not zero:
        return None
    why = ("; under choice likelihood pas-full reads the question alone, which is the same for every item of this "
           "task" if method == "pas-full" else "")
    return (f"{method}'s vector is zero at layer(s) {', '.join(map(str, zero))}: its positive and negative prompts "
            f"gave the same activations{why}")


def _answer_text(tokenizer: PreTrainedTokenizerBase, item: MCItem, choice: int, style: PromptStyle) -> Group:
    head = style.render(tokenizer, question_text(item.question, item.context))
    prompt, answer = encode_continuation(tokenizer, head, item.choices[choice], templated=style.templated(tokenizer))
    return single(prompt + answer)


def vector_groups(method: str, tokenizer: PreTrainedTokenizerBase, items: Sequence[MCItem],
                  predicted: Sequence[int], style: PromptStyle,
                  scoring: Scoring = "letters") -> tuple[list[Group], list[Group] | None]:
    """Extraction groups: (positive, negative) singles, or (pairs, None) when each group is a matched pair."""
    problem = method_problem(method, items, predicted)
    if problem:
        raise ConfigError(problem)
    right = [i for i, p in zip(items, predicted, strict=True) if p == i.answer]
    wrong = [(i, p) for i, p in zip(items, predicted, strict=True) if p != i.answer]
    templated = style.templated(tokenizer)
    if method == "pas-full":
        # The prompt that is scored: lettered under letter scoring, the bare question under choice likelihood.
        def full(item: MCItem) -> Group:
            shown = (lettered_prompt(item.question, item.choices, item.context) if scoring == "letters"
                     else question_text(item.question, item.context))
            return single(encode(tokenizer, style.render(tokenizer, shown), templated=templated))
        return [full(i) for i in right], [full(i) for i, _ in wrong]
    if method == "ipas-all":
        return ([_answer_text(tokenizer, i, i.answer, style) for i in right],
                [_answer_text(tokenizer, i, p, style) for i, p in wrong])
    if method == "ipas-wo":
        pairs = [ContrastPair(i.choices[i.answer], i.choices[p], question_text(i.question, i.context))
                 for i, p in wrong]
        return [pair_group(tokenizer, pair, "last", style) for pair in pairs], None
    if scoring == "likelihood":
        pairs = [ContrastPair(i.choices[i.answer], i.choices[(i.answer + 1) % len(i.choices)],
                              question_text(i.question, i.context)) for i in items]
        return [pair_group(tokenizer, pair, "diff", style) for pair in pairs], None
    pairs = [ContrastPair(letter_answer(i.answer), letter_answer((i.answer + 1) % len(i.choices)),
                          lettered_prompt(i.question, i.choices, i.context)) for i in items]
    return [pair_group(tokenizer, pair, "diff", style) for pair in pairs], None


def build_vector(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    method: str,
    items: Sequence[MCItem],
    predicted: Sequence[int],
    layers: Sequence[int],
    *,
    style: PromptStyle = PromptStyle(),
    scoring: Scoring = "letters",
    batch_size: int = 16,
    progress: Progress = silent,
    extra_metadata: dict[str, Any] | None = None,
    target: Target = "residual",
) -> SteeringVector:
    """The ``method`` vector at every layer in ``layers``, from one extraction pass, read at ``target`` (the block
    output, or its attention or MLP output: see :func:`steerlab.models.target_module`)."""
    positive, negative = vector_groups(method, tokenizer, items, predicted, style, scoring)
    acts = extract(model, positive + (negative or []), layers, batch_size=batch_size, progress=progress,
                   target=target)
    directions = {}
    # The typical size of the activations where the vector is read (the residual stream unless another target is
    # asked for): relative strengths are in this unit.
    residual_norms = {str(layer): float(acts[layer].norm(dim=-1).mean()) for layer in layers}
    for layer in layers:
        if negative is None:
            directions[layer] = mean_difference(acts[layer][0::2], acts[layer][1::2])
        else:
            directions[layer] = mean_difference(acts[layer][: len(positive)], acts[layer][len(positive):])
    metadata: dict[str, Any] = {
        "kind": "vector",
        "model": model_name(model),
        "hidden_size": hidden_size(model),
        "method": method,
        "token": "diff" if method == "caa" else "last",
        "normalized": False,
        "settings": {"train_items": len(items), "chat_template": style.templated(tokenizer), "scoring": scoring},
        "residual_norms": residual_norms,
        "target": target,
    }
    metadata.update(extra_metadata or {})
    return SteeringVector(directions, metadata)
