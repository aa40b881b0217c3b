"""Directions from paired activations: mean difference (CAA), PCA of the differences, a logistic-regression probe.

Every method returns a vector in the same units: PCA and probe directions are unit vectors scaled by the projection
of the mean difference onto them, so a strength of 4 means roughly the same push whichever method made the vector
(the raw mean difference is returned as is).
"""

from __future__ import annotations

from typing import Literal

import torch

from steerlab.errors import ConfigError

Method = Literal["mean-diff", "pca", "probe"]
METHODS: tuple[str, ...] = ("mean-diff", "pca", "probe")


def _check(positive: torch.Tensor, negative: torch.Tensor) -> None:
    if positive.ndim != 2 or negative.ndim != 2 or positive.shape[1] != negative.shape[1]:
        raise ConfigError(f"activations must be (n, hidden) with one hidden size, got {tuple(positive.shape)} "
                          f"and {tuple(negative.shape)}")
    if len(positive) == 0 or len(negative) == 0:
        raise ConfigError("a direction needs at least one positive and one negative example")


def mean_difference(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """mean(positive) - mean(negative), in float64 for reproducible sums, returned as float32."""
    _check(positive, negative)
    return (positive.double().mean(0) - negative.double().mean(0)).float()


def _scaled(direction: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    unit = direction.double() / direction.double().norm()
    along = torch.dot(mean_difference(positive, negative).double(), unit)
    if along < 0:  # sign: positive strength means "more like the positive side"
        unit, along = -unit, -along
    return (unit * along).float()


def pca_direction(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """First principal axis of the paired differences, uncentred.

    Uncentred on purpose: centring the differences removes their shared mean, which is the behaviour direction itself
    (repeng's centred default left mostly the A-vs-B letter axis).
    """
    _check(positive, negative)
    if positive.shape != negative.shape:
        raise ConfigError("PCA of differences needs paired activations (as many positives as negatives)")
    differences = (positive - negative).double()
    _, _, right = torch.linalg.svd(differences, full_matrices=False)
    return _scaled(right[0], positive, negative)


def probe_direction(positive: torch.Tensor, negative: torch.Tensor, *, l2: float = 1e-2,
                    steps: int = 200) -> torch.Tensor:
    """Weight vector of an L2-regularised logistic regression separating positive from negative activations.

    Features are centred and scaled by their overall standard deviation for conditioning; the weight is mapped back to
    activation space before it is normalised. Full-batch L-BFGS from zero: deterministic.
    """
    _check(positive, negative)
    features = torch.cat([positive, negative]).double()
    labels = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).double()
    centre, scale = features.mean(0), features.std().clamp(min=1e-12)
    x = (features - centre) / scale
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, labels)
        value = value + l2 * weight.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    direction = weight.detach() / scale
    if not torch.isfinite(direction).all() or direction.norm() == 0:
        raise ConfigError("the probe did not converge to a usable direction")
    return _scaled(direction, positive, negative)


def direction(method: str, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    if method == "mean-diff":
        return mean_difference(positive, negative)
    if method == "pca":
        return pca_direction(positive, negative)
    if method == "probe":
        return probe_direction(positive, negative)
    raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
