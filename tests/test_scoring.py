"""Scoring against plain full forward passes: choice likelihood, letter log-probabilities, steered or not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import transformers as tf
from conftest import HIDDEN, build_model, build_tokenizer, random_ids

from steerlab.core.hooks import steer
from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError
from steerlab.models import decoder_blocks
from steerlab.runtime.scoring import ChoiceQuestion, choice_logprobs, letter_logprobs, letter_token_ids

QUESTIONS = [
    ChoiceQuestion(tuple(random_ids(6, 1)), (tuple(random_ids(2, 2)), tuple(random_ids(1, 3)))),
    ChoiceQuestion(tuple(random_ids(3, 4)), (tuple(random_ids(3, 5)), tuple(random_ids(1, 6)),
                                            tuple(random_ids(2, 7)))),
    ChoiceQuestion(tuple(random_ids(9, 8)), (tuple(random_ids(4, 9)), tuple(random_ids(2, 10)))),
]
LETTER_IDS = [[9, 7], [10], [20]]
PROMPTS = [random_ids(5, 11), random_ids(2, 12), random_ids(8, 13)]


@contextmanager
def hooked(model: tf.PreTrainedModel, layer: int, add: torch.Tensor, first_column: int = 0,
           only_column: int | None = None) -> Iterator[None]:
    """A plain forward hook adding ``add`` at layer ``layer`` from ``first_column`` on (or at one column)."""

    def hook(_m: object, _a: object, out: object) -> object:
        hidden = out[0] if isinstance(out, tuple) else out  # type: ignore[index]
        mask = torch.zeros(hidden.shape[1], 1)
        if only_column is None:
            mask[first_column:] = 1
        else:
            mask[only_column] = 1
        steered = hidden + mask * add
        return (steered, *out[1:]) if isinstance(out, tuple) else steered  # type: ignore[index]

    handle = decoder_blocks(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def full_choice_logprob(model: tf.PreTrainedModel, question: ChoiceQuestion, choice: tuple[int, ...]) -> float:
    """Sum over the choice's tokens of log-softmax(logits) from one unpadded forward of question + choice."""
    ids = torch.tensor([[*question.prompt, *choice]])
    logprobs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].double(), dim=-1)
    start = len(question.prompt) - 1
    return sum(float(logprobs[start + j, token]) for j, token in enumerate(choice))


def expected_choices(model: tf.PreTrainedModel, normalise: bool = False) -> list[list[float]]:
    return [[full_choice_logprob(model, q, c) / (len(c) if normalise else 1) for c in q.choices]
            for q in QUESTIONS]


def assert_scores(got: list[list[float]], expected: list[list[float]]) -> None:
    assert [len(row) for row in got] == [len(row) for row in expected]
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=5e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_choice_logprobs_equal_a_plain_full_forward(family: str, batch_size: int) -> None:
    model = build_model(family)
    assert_scores(choice_logprobs(model, QUESTIONS, batch_size=batch_size), expected_choices(model))


def test_length_normalised_choice_logprobs(llama: tf.PreTrainedModel) -> None:
    assert_scores(choice_logprobs(llama, QUESTIONS, length_normalize=True), expected_choices(llama, True))


def vector(layer: int, scale: float = 1.5) -> SteeringVector:
    return SteeringVector({layer: torch.randn(HIDDEN, generator=torch.Generator().manual_seed(layer)) * scale})


def test_choice_logprobs_under_steering_equal_the_hooked_full_forward(family: str) -> None:
    model = build_model(family)
    layer, v = 1, vector(1)
    # positions="all": every token of question + choice is steered.
    with hooked(model, layer, v.layers[layer]):
        expected_all = expected_choices(model)
    with steer(model, v, positions="all"):
        assert_scores(choice_logprobs(model, QUESTIONS, batch_size=2), expected_all)
    assert_scores(choice_logprobs(model, QUESTIONS), expected_choices(model))  # hooks gone


@torch.no_grad()
def expected_letters(model: tf.PreTrainedModel) -> torch.Tensor:
    rows = []
    for prompt in PROMPTS:
        logits = model(input_ids=torch.tensor([prompt]), use_cache=False).logits[0, -1].double()
        per_letter = torch.stack([torch.logsumexp(logits[ids], dim=0) for ids in LETTER_IDS])
        rows.append(torch.log_softmax(per_letter, dim=0))
    return torch.stack(rows).float()


@pytest.mark.parametrize("batch_size", [1, 8])
def test_letter_logprobs_match_next_token_logits(family: str, batch_size: int) -> None:
    model = build_model(family)
    got = letter_logprobs(model, PROMPTS, LETTER_IDS, batch_size=batch_size)
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, expected_letters(model), atol=2e-5, rtol=0)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(3))


def test_letter_logprobs_under_steering_equal_the_hooked_full_forward(llama: tf.PreTrainedModel) -> None:
    layer, v = 0, vector(0, scale=3.0)
    with hooked(llama, layer, v.layers[layer]):
        expected_all = expected_letters(llama)
    with steer(llama, v, positions="all"):
        torch.testing.assert_close(letter_logprobs(llama, PROMPTS, LETTER_IDS), expected_all, atol=2e-5, rtol=0)
    with hooked(llama, layer, v.layers[layer], only_column=-1):
        expected_last = expected_letters(llama)
    with steer(llama, v, positions="last_prompt"):
        torch.testing.assert_close(letter_logprobs(llama, PROMPTS, LETTER_IDS), expected_last, atol=2e-5, rtol=0)
    assert not torch.allclose(expected_last, expected_all)


def test_letter_token_ids_collect_every_single_token_spelling() -> None:
    tokenizer = build_tokenizer()
    assert letter_token_ids(tokenizer, ["A", "B"]) == [[9], [10]]

    class Spelled:
        """"A" is one token, " A" another; "B" only exists as two tokens."""

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return {"A": [5], " A": [6], "B": [7, 8], " B": [9, 8]}[text]

    assert letter_token_ids(Spelled(), ["A"]) == [[5, 6]]
    with pytest.raises(ConfigError, match="no single token for the answer letter 'B'"):
        letter_token_ids(Spelled(), ["A", "B"])


def test_question_validation() -> None:
    with pytest.raises(ConfigError, match="at least two tokens"):
        ChoiceQuestion((5,), ((6,),))
    with pytest.raises(ConfigError, match="every choice at least one"):
        ChoiceQuestion((5, 6), ((7,), ()))
