"""Progress reporting without printing: library functions call a callback, the CLI draws the bar.

A phase whose name starts with :data:`OVERALL` counts the units of a whole job (``steerlab run``: seeds x methods);
the CLI keeps it on screen above the phase bars, so a long job shows its overall count and ETA.
"""

from __future__ import annotations

from typing import Protocol

OVERALL = "overall"


class Progress(Protocol):
    def __call__(self, done: int, total: int, what: str) -> None:
        """``done`` of ``total`` units of the phase ``what`` are finished."""
        ...


def silent(done: int, total: int, what: str) -> None:
    """The default: report nothing."""
