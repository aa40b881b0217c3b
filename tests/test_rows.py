"""Per-row steering (steerlab.core.rows) against the ordinary hooks, bit for bit, on tiny models.

The reference for row i is a batch-wide ``apply_steering`` with row i's own steering, on the same padded batch:
row i's output must be identical, and a row without steering must equal the plain model's row.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from steerlab.core.hooks import apply_steering
from steerlab.core.rows import apply_row_steering, row_term
from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError
from steerlab.models import cache_kwarg
from tests.conftest import DEPTH, HIDDEN, build_model, hooks, random_ids


def _vector(seed: int, layers: tuple[int, ...] = (1,)) -> SteeringVector:
    generator = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(HIDDEN, generator=generator) for layer in layers})


def _batch(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of random prompts of ``lengths``: (ids, mask)."""
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.tensor(random_ids(n, seed=row))
        mask[row, width - n:] = 1
    return ids, mask


def _logits(model: tf.PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("positions", ["all", "answer", "prompt", "last_prompt", "turn"])
def test_every_row_alike_equals_the_batch_wide_hooks(family: str, positions: str) -> None:
    model = build_model(family)
    ids, mask = _batch([5, 3, 7])
    lengths = [4, 2, 7]  # the prompt ends inside the call for two rows, so answer/prompt masks differ per row
    turns = [1, 0, 3]  # real tokens before each row's user turn
    vector = _vector(0, (0, 2))
    with apply_steering(model, vector, 1.5, positions=positions, prompt_lengths=lengths, turn_starts=turns):
        expected = _logits(model, ids, mask)
    with apply_row_steering(model, [[row_term(vector, 1.5, positions=positions)]] * 3, lengths, turns):
        got = _logits(model, ids, mask)
    assert torch.equal(got, expected)
    assert not torch.equal(got, _logits(model, ids, mask))


def test_mixed_rows_each_get_exactly_their_own_steering(family: str) -> None:
    model = build_model(family)
    a, b = _vector(1, (1,)), _vector(2, (0, 2))
    ids, mask = _batch([6, 4, 6, 5])
    lengths = [6, 3, 5, 5]
    specs: list[list[tuple[SteeringVector, float, tuple[int, ...] | None, str]]] = [
        [(a, 2.0, None, "answer")],
        [],
        [(b, -1.0, (2,), "all"), (a, 0.5, None, "prompt")],
        [(b, 3.0, None, "last_prompt")],
    ]
    rows = [[row_term(v, s, layers=layers, positions=p) for v, s, layers, p in spec] for spec in specs]
    with apply_row_steering(model, rows, lengths):
        got = _logits(model, ids, mask)
    plain = _logits(model, ids, mask)
    assert torch.equal(got[1], plain[1])  # the unsteered row: bit-identical to the plain model
    for row, spec in enumerate(specs):
        if not spec:
            continue
        handles = [apply_steering(model, v, s, layers=layers, positions=p, prompt_lengths=lengths)
                   for v, s, layers, p in spec]
        try:
            expected = _logits(model, ids, mask)
        finally:
            for handle in handles:
                handle.remove()
        if len(spec) == 1:
            assert torch.equal(got[row], expected[row])
        else:  # two hooks on one block add in two steps, the row hook in one: equal up to float rounding
            torch.testing.assert_close(got[row], expected[row], rtol=1e-5, atol=1e-5)
        assert not torch.equal(got[row], plain[row])


def test_a_recipes_attention_target_is_steered_per_row(family: str) -> None:
    from steerlab.core.recipe import Recipe

    model = build_model(family)
    ids, mask = _batch([5, 4])
    attn = _vector(3, (1,)).with_recipe(Recipe((1,), 1.5, positions="answer", target="attn"))
    assert row_term(attn).target == "attn"
    with apply_steering(model, attn, prompt_lengths=[4, 4]):  # the recipe's target, batch-wide
        expected = _logits(model, ids, mask)
    with apply_row_steering(model, [[row_term(attn)], []], [4, 4]):
        got = _logits(model, ids, mask)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], _logits(model, ids, mask)[1])


def test_cached_decoding_steers_the_answer_per_row() -> None:
    # Prefill then one cached step: "answer" steers the new token in every row, "prompt" in none of them.
    model = build_model("llama")
    ids, mask = _batch([5, 3])
    vector = _vector(3, (1,))
    next_ids = torch.tensor([[20], [21]])
    full_ids, full_mask = torch.cat([ids, next_ids], dim=1), torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    rows = [[row_term(vector, 2.0, positions="answer")], [row_term(vector, 2.0, positions="prompt")]]
    with torch.no_grad(), apply_row_steering(model, rows, [5, 3]):
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        step = model(input_ids=next_ids, attention_mask=full_mask,
                     **cache_kwarg(model, out.past_key_values)).logits[:, -1]
        whole = model(input_ids=full_ids, attention_mask=full_mask).logits[:, -1]
    torch.testing.assert_close(step, whole, rtol=1e-5, atol=1e-5)
    with apply_steering(model, vector, 2.0, positions="answer", prompt_lengths=[5, 3]):
        answer = _logits(model, full_ids, full_mask)[:, -1]
    with apply_steering(model, vector, 2.0, positions="prompt", prompt_lengths=[5, 3]):
        prompt = _logits(model, full_ids, full_mask)[:, -1]
    torch.testing.assert_close(whole[0], answer[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole[1], prompt[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(answer[1], prompt[1], atol=1e-4)  # the two rules do differ on row 1's new token


def test_no_steering_hooks_nothing_and_hooks_go_away() -> None:
    model = build_model("llama")
    ids, mask = _batch([4, 4])
    before = hooks(model)
    with apply_row_steering(model, [[], [row_term(_vector(4), 0.0)]], [4, 4]) as handle:
        assert handle.layers == [] and hooks(model) == before
        assert torch.equal(_logits(model, ids, mask), _logits(model, ids, mask))
    with apply_row_steering(model, [[row_term(_vector(4), 1.0, positions="answer")], []], [4, 4]) as handle:
        assert handle.layers == [1] and hooks(model) != before
    assert hooks(model) == before


def test_row_term_defaults_come_from_the_recipe() -> None:
    from steerlab.core.recipe import Recipe

    vector = _vector(5, (0, 1, 2)).with_recipe(Recipe((1, 2), 0.75, positions="answer"))
    term = row_term(vector)
    assert (term.weight, term.layers, term.positions) == (0.75, frozenset({1, 2}), "answer")
    plain = row_term(_vector(5, (0, 2)))
    assert (plain.weight, plain.layers, plain.positions) == (1.0, frozenset({0, 2}), "all")


def test_bad_row_steering_is_refused_with_the_reason() -> None:
    model = build_model("llama")
    vector = _vector(6, (1,))
    with pytest.raises(ConfigError, match=r"no steering defined at layer\(s\) \[2\]"):
        row_term(vector, layers=[2])
    with pytest.raises(ConfigError, match="unknown positions 'middle'"):
        row_term(vector, positions="middle")
    with pytest.raises(ConfigError, match="2 rows of steering but 1 prompt lengths"):
        apply_row_steering(model, [[], []], [3])
    with pytest.raises(ConfigError, match="positions 'turn' need turn_starts"):
        apply_row_steering(model, [[row_term(vector, positions="turn")]], [3])
    with pytest.raises(ConfigError, match="1 rows of steering but 2 turn starts"):
        apply_row_steering(model, [[]], [3], [0, 1])
    wide = row_term(SteeringVector({1: torch.ones(HIDDEN + 1)}))
    with pytest.raises(ConfigError, match=f"row 0: steering has hidden size {HIDDEN + 1}"):
        apply_row_steering(model, [[wide]], [3])
    deep = row_term(SteeringVector({DEPTH: torch.ones(HIDDEN)}))
    with pytest.raises(ConfigError, match=rf"row 0: layer\(s\) \[{DEPTH}\] out of range"):
        apply_row_steering(model, [[deep]], [3])
    ids, mask = _batch([4, 4, 4])
    with apply_row_steering(model, [[row_term(vector)], []], [4, 4]), \
            pytest.raises(ConfigError, match="set up for 2 rows but the model got 3"):
        _logits(model, ids, mask)
