"""Progress reporting without printing: library functions call a callback, the CLI draws the bar."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, what: str) -> None:
        """``done`` of ``total`` units of the phase ``what`` are finished."""
        ...


def silent(done: int, total: int, what: str) -> None:
    """The default: report nothing."""
