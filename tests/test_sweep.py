"""score_grid over layers x strengths against a hooked full forward per grid point."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import torch
import transformers as tf
from conftest import DEPTH, HIDDEN, PARTS, build_model, random_ids

from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError
from steerlab.models import decoder_blocks
from steerlab.runtime import sweep
from steerlab.runtime.replay import block_diagonal
from steerlab.runtime.sweep import ScoredItem, Scorer, predictions, score_grid, score_push_sets, score_pushes

LAYERS = list(range(DEPTH))
STRENGTHS = [-2.0, 1.5]  # strength 0 has its own test
LETTER_IDS = ((9, 7), (10,), (20,))
QUESTIONS = [random_ids(5, 1), random_ids(2, 2), random_ids(7, 3)]
CHOICES = [
    [random_ids(2, 4), random_ids(1, 5)],
    [random_ids(3, 6), random_ids(1, 7)],
    [random_ids(1, 8), random_ids(4, 9)],
]


@pytest.fixture(autouse=True, params=["stacked", "side by side"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the pushes' copies stacked in the batch, and all side by side in one row wherever the
    model allows."""
    monkeypatch.setattr(sweep, "SIDE_BY_SIDE_LENGTH", -1.0 if request.param == "stacked" else float("inf"))
    return str(request.param)


def in_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies side by side in pairs, the pairs stacked (where the copies would all go side by side, are more than 2
    and even)."""
    every = sweep.copies_side_by_side

    def pairs(*args: object) -> int:
        side = every(*args)  # type: ignore[arg-type]
        return 2 if side > 2 and side % 2 == 0 else side

    monkeypatch.setattr(sweep, "copies_side_by_side", pairs)


def vector() -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    return SteeringVector({layer: torch.randn(HIDDEN, generator=g) for layer in LAYERS})


@contextmanager
def hooked(model: tf.PreTrainedModel, layer: int, add: torch.Tensor, columns: slice,
           part: str | None = None) -> Iterator[None]:
    """``add`` on ``columns`` of block ``layer``'s output, or of its submodule ``part``'s output."""
    def hook(_m: object, _a: object, out: object) -> object:
        hidden = (out[0] if isinstance(out, tuple) else out).clone()  # type: ignore[index]
        hidden[:, columns] += add
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden  # type: ignore[index]

    block = decoder_blocks(model)[layer]
    handle = (block if part is None else block.get_submodule(part)).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def logprobs(model: tf.PreTrainedModel, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double(), dim=-1)


def letter_scores(model: tf.PreTrainedModel, choices: tuple[int, ...] = (3, 3, 3)) -> list[list[float]]:
    """Each question's log-probs over its first ``choices`` letters."""
    rows = []
    for question, n in zip(QUESTIONS, choices, strict=True):
        last = logprobs(model, question)[-1]
        per_letter = torch.stack([torch.logsumexp(last[list(ids)], dim=0) for ids in LETTER_IDS[:n]])
        rows.append(torch.log_softmax(per_letter, dim=0).tolist())
    return rows


def choice_scores(model: tf.PreTrainedModel, steer_from: str | None = None, layer: int = 0,
                  add: torch.Tensor | None = None, also: dict[int, torch.Tensor] | None = None,
                  part: str | None = None) -> list[list[float]]:
    """Log-likelihood of each choice; ``steer_from`` "answer" steers from the last question token, "all" all.

    ``also`` adds more layers' pushes on the same columns (steering several layers at once)."""
    rows = []
    for question, choices in zip(QUESTIONS, CHOICES, strict=True):
        row = []
        for choice in choices:
            start = len(question) - 1
            if steer_from is None:
                lp = logprobs(model, question + choice)
            else:
                assert add is not None
                columns = {"answer": slice(start, None), "last_prompt": slice(start, start + 1),
                           "prompt": slice(None, start + 1)}.get(steer_from, slice(None))
                with ExitStack() as stack:
                    for at, push in {layer: add, **(also or {})}.items():
                        stack.enter_context(hooked(model, at, push, columns, part))
                    lp = logprobs(model, question + choice)
            row.append(sum(float(lp[start + j, token]) for j, token in enumerate(choice)))
        rows.append(row)
    return rows


def assert_grid(got: list[list[float]], expected: list[list[float]]) -> None:
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=2e-5)


@pytest.mark.parametrize("choices", [(3, 3, 3), (2, 3, 1)])
def test_letter_grid_with_last_token_steering(family: str, choices: tuple[int, ...]) -> None:
    # (2, 3, 1): questions of a task with fewer choices than its widest compete over their own letters only.
    model, v = build_model(family), vector()
    items = [ScoredItem(tuple(q[:-1]), ((q[-1],),), choices=n) for q, n in zip(QUESTIONS, choices, strict=True)]
    result = score_grid(model, items, Scorer(letter_ids=LETTER_IDS), v, LAYERS, STRENGTHS, batch_size=2)
    assert_grid(result.baseline, letter_scores(model, choices))
    assert [len(row) for row in result.baseline] == list(choices)
    assert set(result.grid) == {(layer, s) for layer in LAYERS for s in STRENGTHS}
    for (layer, strength), scores in result.grid.items():
        with hooked(model, layer, strength * v.layers[layer], slice(-1, None)):
            assert_grid(scores, letter_scores(model, choices))


def test_choice_grid_with_answer_steering(family: str) -> None:
    model, v = build_model(family), vector()
    items = [ScoredItem(tuple(q[:-1]), tuple((q[-1], *c) for c in cs)) for q, cs in zip(QUESTIONS, CHOICES,
                                                                                           strict=True)]
    result = score_grid(model, items, Scorer(), v, LAYERS, STRENGTHS, batch_size=2)
    assert_grid(result.baseline, choice_scores(model))
    for (layer, strength), scores in result.grid.items():
        assert_grid(scores, choice_scores(model, "answer", layer, strength * v.layers[layer]))


def test_choice_grid_with_all_position_steering(family: str) -> None:
    model, v = build_model(family), vector()
    items = [ScoredItem((), tuple((*q, *c) for c in cs), (len(q) - 1,) * len(cs))
             for q, cs in zip(QUESTIONS, CHOICES, strict=True)]
    result = score_grid(model, items, Scorer(), v, LAYERS, STRENGTHS, batch_size=3)
    assert_grid(result.baseline, choice_scores(model))
    for (layer, strength), scores in result.grid.items():
        assert_grid(scores, choice_scores(model, "all", layer, strength * v.layers[layer]))


def test_length_normalised_scores(llama: tf.PreTrainedModel) -> None:
    items = [ScoredItem(tuple(q[:-1]), tuple((q[-1], *c) for c in cs)) for q, cs in zip(QUESTIONS, CHOICES,
                                                                                           strict=True)]
    result = score_grid(llama, items, Scorer(length_normalize=True))
    expected = [[s / len(c) for s, c in zip(row, cs, strict=True)]
                for row, cs in zip(choice_scores(llama), CHOICES, strict=True)]
    assert_grid(result.baseline, expected)
    assert result.grid == {}


def test_strength_zero_equals_the_baseline_and_predictions(llama: tf.PreTrainedModel) -> None:
    items = [ScoredItem(tuple(q[:-1]), ((q[-1],),)) for q in QUESTIONS]
    result = score_grid(llama, items, Scorer(letter_ids=LETTER_IDS), vector(), [1], [0.0])
    assert_grid(result.grid[(1, 0.0)], result.baseline)
    assert predictions([[0.1, 0.5, 0.2], [0.3, 0.3, 0.1], [-1.0, -2.0, -0.5]]) == [1, 0, 2]


def test_progress_and_errors(llama: tf.PreTrainedModel) -> None:
    items = [ScoredItem(tuple(q[:-1]), ((q[-1],),)) for q in QUESTIONS]
    calls: list[tuple[int, int, str]] = []
    score_grid(llama, items, Scorer(letter_ids=LETTER_IDS), batch_size=2,
               progress=lambda done, total, what: calls.append((done, total, what)), what="letters")
    assert calls == [(2, 3, "letters"), (3, 3, "letters")]
    partial = SteeringVector({0: torch.ones(HIDDEN)})
    with pytest.raises(ConfigError, match=r"the vector has no direction at layer\(s\) \[1, 2\]"):
        score_grid(llama, items, Scorer(letter_ids=LETTER_IDS), partial, [0, 1, 2], [1.0])


def test_last_prompt_and_prompt_steering_in_the_choice_grid(family: str) -> None:
    # steered_length limits the push to the first positions of each chunk: the last question token alone, or the
    # question without its answer.
    model, v = build_model(family), vector()
    last = [ScoredItem(tuple(q[:-1]), tuple((q[-1], *c) for c in cs), steered_length=1)
            for q, cs in zip(QUESTIONS, CHOICES, strict=True)]
    prompt = [ScoredItem((), tuple((*q, *c) for c in cs), (len(q) - 1,) * len(cs), steered_length=len(q))
              for q, cs in zip(QUESTIONS, CHOICES, strict=True)]
    for items, where in ((last, "last_prompt"), (prompt, "prompt")):
        result = score_grid(model, items, Scorer(), v, LAYERS, STRENGTHS, batch_size=2)
        for (layer, strength), scores in result.grid.items():
            assert_grid(scores, choice_scores(model, where, layer, strength * v.layers[layer]))


@pytest.mark.parametrize("pairs", [False, True])
def test_random_rows_in_one_replay_equal_separate_hooked_passes(family: str, pairs: bool, layout: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The controls of steerlab run: +v, -v and K random directions as rows of one replay batch, each equal to a
    # separate full forward with a hook adding that row.
    if pairs:
        if layout == "stacked":
            pytest.skip("pairs are a side-by-side layout")
        in_pairs(monkeypatch)
    model, v = build_model(family), vector()
    g = torch.Generator().manual_seed(3)
    rows = torch.cat([v.layers[1][None], -v.layers[1][None], torch.randn(6, HIDDEN, generator=g)])
    items = [ScoredItem(tuple(q[:-1]), tuple((q[-1], *c) for c in cs)) for q, cs in zip(QUESTIONS, CHOICES,
                                                                                           strict=True)]
    result = score_pushes(model, items, Scorer(), {1: rows}, batch_size=2)
    assert len(result.steered[1]) == len(rows)
    for k, scores in enumerate(result.steered[1]):
        assert_grid(scores, choice_scores(model, "answer", 1, rows[k]))
    with pytest.raises(ConfigError, match=r"pushes at layer 1 must be non-empty \(P, hidden\) tensors"):
        score_pushes(model, items, Scorer(), {1: torch.zeros(0, HIDDEN)})


def test_layer_sets_equal_hooks_at_every_layer_of_the_set(family: str) -> None:
    # Multi-layer PAS: push k adds row k at every layer of the set at once; the replay starts at the lowest layer
    # and adds the others on the way up. Expected: a full forward with one hook per layer, on the answer columns.
    model, v = build_model(family), vector()
    g = torch.Generator().manual_seed(4)
    signs = torch.tensor([1.5, -1.5])[:, None]
    sets = {(0, 2): {0: signs * v.layers[0], 2: signs * v.layers[2]},
            (0, 1, 2): {layer: torch.randn(3, HIDDEN, generator=g) for layer in LAYERS}}
    items = [ScoredItem(tuple(q[:-1]), tuple((q[-1], *c) for c in cs)) for q, cs in zip(QUESTIONS, CHOICES,
                                                                                           strict=True)]
    result = score_push_sets(model, items, Scorer(), sets, batch_size=2)
    assert_grid(result.baseline, choice_scores(model))
    for key, group in sets.items():
        for k, scores in enumerate(result.steered[key]):
            assert_grid(scores, choice_scores(model, "answer", key[0], group[key[0]][k],
                                              {layer: group[layer][k] for layer in key[1:]}))
    with pytest.raises(ConfigError, match=r"push set \(0, 1\) must give additions for exactly its layers"):
        score_push_sets(model, items, Scorer(), {(0, 1): {0: signs * v.layers[0]}})


@pytest.mark.parametrize("target", ["attn", "mlp"])
def test_attention_and_mlp_targets_equal_hooks_on_those_modules(family: str, target: str) -> None:
    # The replay starts from the lowest block's recorded input and runs that block with the push inside it.
    model, v = build_model(family), vector()
    signs = torch.tensor([1.5, -2.0])[:, None]
    sets = {(0,): {0: signs * v.layers[0]}, (1, 2): {1: signs * v.layers[1], 2: signs * v.layers[2]}}
    items = [ScoredItem(tuple(q[:-1]), tuple((q[-1], *c) for c in cs)) for q, cs in zip(QUESTIONS, CHOICES,
                                                                                           strict=True)]
    result = score_push_sets(model, items, Scorer(), sets, batch_size=2, target=target)
    assert_grid(result.baseline, choice_scores(model))
    part = PARTS[family][target][0]
    for key, group in sets.items():
        for k, scores in enumerate(result.steered[key]):
            assert_grid(scores, choice_scores(model, "answer", key[0], group[key[0]][k],
                                              {layer: group[layer][k] for layer in key[1:]}, part))


def test_block_diagonal_mask_against_a_direct_construction() -> None:
    past, width, copies = 3, 2, 3
    g = torch.Generator().manual_seed(0)
    recorded = torch.rand((2, 1, width, past + width), generator=g) > 0.3
    got = block_diagonal(recorded, copies, past)
    assert got.shape == (2, 1, copies * width, past + copies * width)
    for q in range(copies * width):
        k, i = divmod(q, width)  # copy k, its token i
        for key in range(past + copies * width):
            if key < past:
                want = bool(recorded[1, 0, i, key])
            elif (key - past) // width == k:
                want = bool(recorded[1, 0, i, past + (key - past) % width])
            else:
                want = False
            assert bool(got[1, 0, q, key]) == want
    additive = torch.where(recorded, 0.0, torch.finfo(torch.float32).min)
    assert torch.equal(block_diagonal(additive, copies, past) == 0, got)


@pytest.mark.parametrize("pairs", [False, True])
def test_side_by_side_replays_each_row_once_with_the_copies_in_its_sequence(layout: str, pairs: bool,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if pairs:
        in_pairs(monkeypatch)
    model, v = build_model("llama"), vector()
    items = [ScoredItem(tuple(q[:-1]), ((q[-1],),)) for q in QUESTIONS]
    shapes: list[tuple[int, ...]] = []
    handle = decoder_blocks(model)[DEPTH - 1].register_forward_pre_hook(
        lambda _m, args: shapes.append(tuple(args[0].shape)))
    try:
        score_grid(model, items, Scorer(letter_ids=LETTER_IDS), v, [0], [-2.0, 1.5, 0.5, 3.0], batch_size=3)
    finally:
        handle.remove()
    unsteered, replayed = shapes[-2:]  # the pass over the last tokens (after their prompts'), the replay
    assert unsteered[:2] == (3, 1)
    assert replayed[:2] == {"stacked": (12, 1), "side by side": (6, 2) if pairs else (3, 4)}[layout]
