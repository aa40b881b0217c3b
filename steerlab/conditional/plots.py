"""The score distributions of both prompt sets at every candidate layer, one panel per layer.

Example::

    from steerlab.conditional.plots import plot_scores
    png_bytes = plot_scores(trained.validation_scores, chosen=trained.condition)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from steerlab.conditional.program import Condition
from steerlab.experiment.plots import png


def plot_scores(scores: Mapping[str, Mapping[int, list[float]]], chosen: Condition) -> bytes:
    """PNG bytes: per layer, histograms of the positive and negative validation scores; the chosen layers carry
    the threshold as a vertical line."""
    layers = sorted(scores["positive"])
    columns = min(4, len(layers))
    rows = math.ceil(len(layers) / columns)
    fig = Figure(figsize=(3.2 * columns, 2.4 * rows))
    for k, layer in enumerate(layers):
        ax = fig.add_subplot(rows, columns, k + 1)
        pos, neg = np.asarray(scores["positive"][layer]), np.asarray(scores["negative"][layer])
        bins = np.linspace(min(pos.min(), neg.min()), max(pos.max(), neg.max()) + 1e-9, 25).tolist()
        ax.hist(neg, bins=bins, alpha=0.6, label="negative", color="tab:blue")
        ax.hist(pos, bins=bins, alpha=0.6, label="positive", color="tab:red")
        if layer in chosen.directions:
            ax.axvline(chosen.threshold, color="black", linestyle="--", label=f"{chosen.comparator} threshold")
        ax.set_title(f"layer {layer}" + (" (chosen)" if layer in chosen.directions else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"condition '{chosen.name}': {chosen.score} scores on validation", fontsize=10)
    fig.tight_layout()
    return png(fig)
