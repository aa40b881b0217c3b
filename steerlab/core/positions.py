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
