"""The one padding helper: exact ids, masks and positions on both sides."""

from __future__ import annotations

import torch
from conftest import build_model

from steerlab.runtime.batching import pad, pad_id, positions


def test_left_and_right_padding_and_positions() -> None:
    ids, mask = pad([[5, 6, 7], [8], []], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert positions(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]
    ids, mask = pad([[5, 6, 7], [8]], 9, side="right", width=4)
    assert ids.tolist() == [[5, 6, 7, 9], [8, 9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert positions(torch.tensor([[0, 1, 1], [1, 1, 1]])).tolist() == [[0, 0, 1], [0, 1, 2]]


def test_pad_id_prefers_pad_then_eos() -> None:
    model = build_model("llama")
    assert pad_id(model) == 0
    model.config.pad_token_id = None
    model.config.eos_token_id = [2, 7]
    assert pad_id(model) == 2
