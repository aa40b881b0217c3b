"""The one vocabulary of steering positions, used by the hooks, the sweep, the CLI, vector files and reports.

- ``last_prompt``: the last prompt token (the one that predicts the first answer token);
- ``answer``: every position that predicts an answer token: the last prompt token and the answer (or generated)
  tokens after it;
- ``prompt``: every prompt token, none of the answer;
- ``turn``: the user's last turn and the answer: from the first token of the user's (last) message to the end,
  never a system prompt, earlier turns (in-context examples) or padding. Where that turn starts is not visible in
  token ids: the caller gives it per row (``turn_starts=``); ``generate`` and the sweep compute it from the chat
  template (:meth:`steerlab.data.prompts.PromptStyle.turn_start`);
- ``all``: every position (system prompt, chat template and padding included).

Padding is never steered except under ``all``, where it is harmless (nothing attends to it).
"""

from __future__ import annotations

from typing import Literal

import torch

from steerlab.errors import ConfigError

Positions = Literal["last_prompt", "answer", "prompt", "turn", "all"]
POSITIONS: tuple[Positions, ...] = ("last_prompt", "answer", "prompt", "turn", "all")

_RENAMED = {"last": "last_prompt", "last-token": "last_prompt", "generated": "answer"}


def check_positions(value: str) -> Positions:
    """``value`` as a position name, or a ConfigError that lists the names (and the new name of an old one)."""
    for name in POSITIONS:
        if value == name:
            return name
    hint = f" (now called '{_RENAMED[value]}')" if value in _RENAMED else ""
    raise ConfigError(f"unknown positions '{value}'{hint}; choose one of {', '.join(POSITIONS)}")


def position_mask(positions: Positions, where: torch.Tensor, end: torch.Tensor, turn_start: torch.Tensor | None,
                  real: torch.Tensor) -> torch.Tensor:
    """(batch, chunk, 1) True where ``positions`` select a column of the current call; padding is never selected.

    ``where`` (batch, chunk) places each column on a per-row axis (absolute column, or count of real tokens before
    it) on which ``end`` (batch,) is just after the row's last prompt token and ``turn_start`` (batch,) is the first
    token of the row's turn (needed by ``turn`` only); ``real`` (batch, chunk) is False on padding.
    """
    end = end.to(where.device)[:, None]
    if positions == "turn":
        if turn_start is None:
            raise ConfigError("positions 'turn' need where each row's turn starts")
        keep = where >= turn_start.to(where.device)[:, None]
    elif positions == "prompt":
        keep = where < end
    elif positions == "answer":
        keep = where >= end - 1
    elif positions == "last_prompt":
        keep = where == end - 1
    else:
        keep = torch.ones_like(where, dtype=torch.bool)
    return (keep & real)[..., None]
