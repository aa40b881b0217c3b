"""The sweep computes a prefix common to every item (system prompt, in-context examples) once: same scores."""

from __future__ import annotations

import pytest
import torch

from steerlab.core.vector import SteeringVector
from steerlab.runtime import sweep
from steerlab.runtime.sweep import ScoredItem, Scorer, score_grid
from tests.conftest import HIDDEN, build_model


def _items(letters: bool) -> list[ScoredItem]:
    generator = torch.Generator().manual_seed(3)
    shared = tuple(int(t) for t in torch.randint(3, 90, (40,), generator=generator))
    items = []
    for k, extra in enumerate((0, 1, 5, 9, 2)):
        own = tuple(int(t) for t in torch.randint(3, 90, (extra + 1,), generator=generator))
        if letters:
            items.append(ScoredItem(shared + own, ((10 + k,),)))
        else:
            chunks = ((own[-1], 20, 21 + k), (own[-1], 30), (own[-1], 40, 41, 42))
            items.append(ScoredItem(shared + own[:-1], chunks, (0, 0, 0)))
    return items


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("letters", [True, False])
def test_shared_prefix_changes_nothing(family: str, letters: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(family, torch.float64)
    items = _items(letters)
    scorer = Scorer(((9,), (10,), (11,)) if letters else None)
    vector = SteeringVector({0: torch.randn(HIDDEN, dtype=torch.float64), 1: torch.randn(HIDDEN, dtype=torch.float64)})
    assert sweep._shared_prefix(model, items).length == (40 if letters else 39)  # each item keeps one token
    shared = score_grid(model, items, scorer, vector, [0, 1], [-2.0, 3.0], batch_size=2)
    monkeypatch.setattr(sweep, "SHARED_MIN_TOKENS", 10**9)
    assert sweep._shared_prefix(model, items).length == 0
    plain = score_grid(model, items, scorer, vector, [0, 1], [-2.0, 3.0], batch_size=2)
    torch.testing.assert_close(torch.tensor(shared.baseline), torch.tensor(plain.baseline), rtol=0, atol=1e-9)
    assert shared.grid.keys() == plain.grid.keys()
    for key in plain.grid:
        torch.testing.assert_close(torch.tensor(shared.grid[key]), torch.tensor(plain.grid[key]), rtol=0, atol=1e-9)
    moved = [abs(a - b) for key in plain.grid for row_s, row_b in zip(plain.grid[key], plain.baseline, strict=True)
             for a, b in zip(row_s, row_b, strict=True)]
    assert max(moved) > 1e-3  # the steering did act


@pytest.mark.parametrize("letters", [True, False])
def test_a_sliding_window_model_shares_no_prefix_and_batches_exactly(letters: bool) -> None:
    # gemma2's window (4 tokens) is far shorter than the 40 shared tokens: padding after them would take its slots.
    # float32: transformers' eager attention turns float64 left padding into NaN on its own.
    model = build_model("gemma2", torch.float32)
    items = _items(letters)
    scorer = Scorer(((9,), (10,), (11,)) if letters else None)
    vector = SteeringVector({0: torch.randn(HIDDEN), 1: torch.randn(HIDDEN)})
    assert sweep._shared_prefix(model, items).length == 0
    batched = score_grid(model, items, scorer, vector, [0, 1], [-2.0, 3.0], batch_size=5)
    alone = score_grid(model, items, scorer, vector, [0, 1], [-2.0, 3.0], batch_size=1)  # no padding at all
    torch.testing.assert_close(torch.tensor(batched.baseline), torch.tensor(alone.baseline), rtol=0, atol=2e-5)
    for key in alone.grid:
        torch.testing.assert_close(torch.tensor(batched.grid[key]), torch.tensor(alone.grid[key]), rtol=0, atol=2e-5)
