"""Retention: knowledge accuracy and neutral-text KL / perplexity under a recipe, against a direct computation with a
hand-written hook on a tiny model."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from conftest import build_model, build_tokenizer

from steerlab.core.recipe import Recipe
from steerlab.core.vector import SteeringVector
from steerlab.data.items import MCItem
from steerlab.data.prompts import PromptStyle, encode_continuation, question_text
from steerlab.errors import ConfigError
from steerlab.experiment.retention import coherence_scores, knowledge_scores, measure_retention, summarise
from steerlab.methods.pas import TaskFormat
from steerlab.runtime.generate import generate

STYLE = PromptStyle(chat=True)
LAYER = 1


def _items() -> list[MCItem]:
    generator = torch.Generator().manual_seed(3)

    def words(n: int) -> str:
        return " ".join(f"w{int(i)}" for i in torch.randint(0, 80, (n,), generator=generator))

    return [MCItem(id=f"q{k}", question=words(5), choices=(words(2), words(2), words(2)), answer=k % 3)
            for k in range(12)]


def _vector(strength: float, positions: str) -> SteeringVector:
    direction = torch.randn(32, generator=torch.Generator().manual_seed(7))
    return SteeringVector({LAYER: direction}).with_recipe(Recipe((LAYER,), strength, "absolute", positions))


@contextmanager
def _added(model: torch.nn.Module, push: torch.Tensor, first: int, last: int | None = None) -> Iterator[None]:
    """Add ``push`` to block LAYER's output at positions first..last (one unpadded row)."""
    def hook(module: torch.nn.Module, args: object, output: object) -> object:
        hidden = output[0] if isinstance(output, tuple) else output
        assert isinstance(hidden, torch.Tensor)
        hidden = hidden.clone()
        hidden[0, first:last] += push
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.model.layers[LAYER].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _span(positions: str, start: int, length: int) -> tuple[int, int | None]:
    """The steered positions of one row whose prompt has ``start`` tokens, as (first, last exclusive)."""
    return {"answer": (start - 1, None), "last_prompt": (start - 1, start), "all": (0, None)}[positions]


@torch.no_grad()
def _direct_predictions(model: torch.nn.Module, tok: object, items: Sequence[MCItem], push: torch.Tensor,
                        positions: str) -> list[int]:
    picks = []
    for item in items:
        head = STYLE.render(tok, question_text(item.question))  # type: ignore[arg-type]
        totals = []
        for choice in item.choices:
            prompt, answer = encode_continuation(tok, head, choice, templated=True)  # type: ignore[arg-type]
            ids = torch.tensor([prompt + answer])
            with _added(model, push, *_span(positions, len(prompt), ids.shape[1])):
                logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            totals.append(sum(float(logprobs[len(prompt) - 1 + k, t]) for k, t in enumerate(answer)))
        picks.append(max(range(len(totals)), key=totals.__getitem__))
    return picks


@pytest.mark.parametrize("positions", ["answer", "last_prompt", "all"])
def test_knowledge_predictions_match_a_direct_hooked_forward(positions: str) -> None:
    model, tok, items = build_model("llama"), build_tokenizer(), _items()
    vector = _vector(6.0, positions)
    fmt = TaskFormat(scoring="likelihood", style=STYLE)
    baseline, steered = knowledge_scores(model, tok, vector, items, fmt, batch_size=5)
    push = vector.layers[LAYER] * 6.0
    assert baseline == _direct_predictions(model, tok, items, torch.zeros(32), positions)
    assert steered == _direct_predictions(model, tok, items, push, positions)
    assert steered != baseline  # the push is large enough to change answers, so the comparison can fail


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_coherence_matches_a_direct_kl_and_nll(positions: str) -> None:
    model, tok = build_model("llama"), build_tokenizer()
    prompts = ["w3 w4 w5", "w10 w11", "w40 w41 w42 w43 w44", "w7"]
    vector = _vector(3.0, positions)
    fmt = TaskFormat(scoring="likelihood", style=STYLE)
    got = coherence_scores(model, tok, vector, prompts, fmt, answer_tokens=6, batch_size=3)
    answers = generate(model, tok, prompts, max_new_tokens=6, style=STYLE)
    push = vector.layers[LAYER] * 3.0
    for k, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        head, tokens = encode_continuation(tok, STYLE.render(tok, prompt), answer, templated=True)
        ids = torch.tensor([head + tokens])
        with torch.no_grad():
            p = torch.log_softmax(model(ids).logits[0].double(), dim=-1)[len(head) - 1:-1]
            with _added(model, push, *_span(positions, len(head), ids.shape[1])):
                q = torch.log_softmax(model(ids).logits[0].double(), dim=-1)[len(head) - 1:-1]
        target = torch.tensor(tokens)[:, None]
        kl = F.kl_div(q, p, log_target=True, reduction="none").sum(-1).mean()
        assert got["tokens"][k] == len(tokens) and 1 <= len(tokens) <= 6  # special tokens are not text
        assert got["kl"][k] == pytest.approx(float(kl), rel=1e-4, abs=1e-7)
        assert got["nll_unsteered"][k] == pytest.approx(float(-p.gather(1, target).mean()), rel=1e-5)
        assert got["nll_steered"][k] == pytest.approx(float(-q.gather(1, target).mean()), rel=1e-5)
    assert min(got["kl"]) > 1e-4


def test_summary_intervals_and_zero_strength() -> None:
    model, tok, items = build_model("llama"), build_tokenizer(), _items()
    fmt = TaskFormat(scoring="likelihood", style=STYLE)
    raw = measure_retention(model, tok, _vector(6.0, "answer"), items, fmt, prompts=["w3 w4", "w9 w8 w7"],
                            answer_tokens=4)
    result = summarise("tiny", raw)
    differences = [s - b for s, b in zip(result.steered, result.baseline, strict=True)]
    assert result.delta.value == pytest.approx(sum(differences) / len(differences))
    c = raw["coherence"]
    weighted = sum(n * t for n, t in zip(c["nll_steered"], c["tokens"], strict=True)) / sum(c["tokens"])
    assert result.coherence.perplexity_steered == pytest.approx(math.exp(weighted))
    assert result.coherence.kl.value == pytest.approx(sum(c["kl"]) / 2)
    assert result.summary()["items"] == 12 and "on tiny (12 items" in result.verdict_text
    # Strength 0 adds nothing: the same answers, no distribution shift.
    zero = summarise("tiny", measure_retention(model, tok, _vector(0.0, "answer"), items, fmt,
                                               prompts=["w3 w4"], answer_tokens=4))
    assert zero.steered == zero.baseline and zero.cost == "no measurable cost"
    assert zero.coherence.kl.value == 0.0
    assert zero.coherence.perplexity_steered == zero.coherence.perplexity_unsteered


def test_a_vector_without_recipe_is_refused() -> None:
    model, tok = build_model("llama"), build_tokenizer()
    with pytest.raises(ConfigError, match="retention needs a vector with a recipe"):
        knowledge_scores(model, tok, SteeringVector({1: torch.ones(32)}), _items(), TaskFormat())


@pytest.mark.real
def test_real_model_a_zero_push_costs_nothing_and_a_large_one_costs_coherence() -> None:
    """On the embedded model, 12 MMLU items and 4 neutral requests: strength 0 changes nothing; a random direction
    twice the mean residual norm at layer 12, on the answer, makes the model's own answers far less likely."""
    from steerlab.experiment.retention import neutral_prompts, retention_items
    from steerlab.models import load_model

    model, tok = load_model()
    items = retention_items("mmlu", 12, 0)
    prompts = neutral_prompts(4)
    ids = tok(prompts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        norm = float(model(ids, output_hidden_states=True).hidden_states[13][0].norm(dim=-1).mean())
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    fmt = TaskFormat(scoring="likelihood")
    results = {}
    for strength in (0.0, 2.0):
        vector = SteeringVector({12: direction / direction.norm() * norm}).with_recipe(
            Recipe((12,), strength, "absolute", "answer"))
        results[strength] = summarise("mmlu", measure_retention(model, tok, vector, items, fmt, prompts=prompts,
                                                                answer_tokens=12))
    zero, large = results[0.0], results[2.0]
    assert zero.steered == zero.baseline and zero.coherence.kl.value == 0.0
    assert large.coherence.kl.value > 0.5
    assert large.coherence.perplexity_steered > 2 * large.coherence.perplexity_unsteered
