"""Padding token sequences into one batch: the one helper every forward pass of steerlab uses.

Left padding puts every row's last token in the last column (prompts that continue into a cache or generation);
right padding keeps every row's tokens at columns 0.. (chunks after a shared cache, training sequences). Either way
the mask is 1 on real tokens, and positions come from ``positions(mask)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn


def pad_id(model: nn.Module) -> int:
    """The model's pad token id, else its eos or bos id, else 0 (padding is masked, so any id in the vocab works)."""
    config: Any = getattr(model, "config", None)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return 0


def pad(rows: Sequence[Sequence[int]], pad_token: int, *, side: Literal["left", "right"] = "left",
        device: torch.device | str | None = None, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (len(rows), width): each row's tokens on ``side``'s opposite end, padding elsewhere."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    ids = torch.full((len(rows), width), pad_token, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        if not row:
            continue
        columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, columns] = torch.tensor(list(row), dtype=torch.long, device=device)
        mask[i, columns] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (padding gets 0, and is masked anyway)."""
    return (mask.cumsum(1) - 1).clamp(min=0)
