"""Choosing a steering point on validation: one grid point, or a set of layers grown greedily from it.

``directional`` maximises half the gap between ``+s`` and ``-s`` among points where ``+s`` does not lower validation
accuracy (a push's disruption does not depend on its sign to first order, its direction does); ``accuracy``
maximises validation accuracy. Ties go to the smaller strength, then the earlier layer, then the earlier positions.

Example::

    from steerlab.experiment.results import SweepCell
    from steerlab.experiment.selection import choose
    cells = [SweepCell("answer", 3, 4.0, 0.70, 0.68), SweepCell("answer", 3, 1.0, 0.60, 0.30)]
    print(choose(cells, 0.5, "directional", ["answer"]))  # the second: the sign decides there
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from steerlab.experiment.results import SweepCell


def _tie(cell: SweepCell, positions_order: Sequence[str]) -> tuple[float, int, int]:
    return -abs(cell.strength), -cell.layers[-1], -positions_order.index(cell.positions)


def score(cell: SweepCell, rule: str) -> float:
    """What ``rule`` maximises."""
    return cell.val_accuracy if rule == "accuracy" else cell.gain


def choose(cells: Sequence[SweepCell], val_baseline: float, rule: str,
           positions_order: Sequence[str]) -> tuple[SweepCell, float]:
    """The chosen grid point and its selection score (see the module docstring)."""
    if rule == "accuracy":
        best = max(cells, key=lambda c: (c.val_accuracy, *_tie(c, positions_order)))
        return best, best.val_accuracy
    eligible = [c for c in cells if c.val_accuracy >= val_baseline] or list(cells)
    best = max(eligible, key=lambda c: (c.gain, *_tie(c, positions_order)))
    return best, best.gain


def grow_layer_set(
    start: SweepCell,
    candidates: Sequence[int],
    evaluate: Callable[[tuple[int, ...], Sequence[int]], list[SweepCell]],
    val_baseline: float,
    rule: str,
    max_layers: int,
) -> tuple[SweepCell, list[SweepCell]]:
    """Greedy forward selection of up to ``max_layers`` layers, each with its own vector and one shared strength.

    From the chosen single-layer point ``start``, each step asks ``evaluate(current_layers, new_layers)`` for the
    cells of ``current_layers + (new,)`` for every ``new`` layer not yet in the set (every strength of the grid,
    at ``start``'s positions), and keeps the best one only if it beats the current set's selection score and, under
    the directional rule, ``+s`` does not lower validation accuracy. Returns the final point and every cell evaluated.
    """
    current, evaluated = start, []
    while len(current.layers) < max_layers:
        new = [layer for layer in candidates if layer not in current.layers]
        if not new:
            break
        cells = evaluate(current.layers, new)
        evaluated += cells
        best, best_score = choose(cells, val_baseline, rule, [start.positions])
        if best_score <= score(current, rule) or (rule == "directional" and best.val_accuracy < val_baseline):
            break
        current = best
    return current, evaluated
