"""Directions from paired activations: exact mean difference, PCA sign and scale, a separating probe."""

from __future__ import annotations

import pytest
import torch

from steerlab.errors import ConfigError
from steerlab.methods.contrastive import direction, mean_difference, pca_direction, probe_direction


def test_mean_difference_is_exact() -> None:
    positive = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    negative = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [2.0, -1.0, 1.0]])
    got = mean_difference(positive, negative)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([2.0 - 1.0, 3.0 - 0.0, 4.0 - 1.0]))
    assert torch.equal(direction("mean-diff", positive, negative), got)


def test_mean_difference_sums_in_float64() -> None:
    # 1e8 + 1 - 1e8 loses the 1 in float32 arithmetic; the float64 sum keeps it.
    positive = torch.tensor([[1e8], [1.0], [-1e8]])
    negative = torch.zeros(3, 1)
    assert mean_difference(positive, negative).item() == pytest.approx(1 / 3, rel=1e-6)


def paired(seed: int, n: int = 40, hidden: int = 12,
           sign: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs whose differences lie along one axis (with varying size and a little noise), around random bases."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(hidden, generator=g)
    axis /= axis.norm()
    base = torch.randn(n, hidden, generator=g) * 3
    size = 1 + torch.rand(n, 1, generator=g)
    noise = torch.randn(n, hidden, generator=g) * 0.01
    positive = base + sign * size * axis + noise
    return positive, base, axis


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pca_finds_the_axis_with_positive_pointing_to_the_positive_side(sign: float) -> None:
    positive, negative, axis = paired(0, sign=sign)
    got = pca_direction(positive, negative)
    mean_diff = mean_difference(positive, negative).double()
    unit = got.double() / got.double().norm()
    assert abs(float(unit @ axis.double())) > 0.999
    # Sign: positives project higher than their negatives along the vector.
    assert ((positive - negative).double() @ unit > 0).all()
    # Scale: the projection of the mean difference onto the direction.
    assert got.norm().item() == pytest.approx(float(mean_diff @ unit), rel=1e-5)
    assert torch.equal(direction("pca", positive, negative), got)


def test_pca_sign_is_fixed_by_the_mean_difference_not_by_the_svd() -> None:
    positive, negative, _ = paired(1)
    # Swapping the roles of the sides flips the vector exactly.
    assert torch.allclose(pca_direction(negative, positive), -pca_direction(positive, negative), atol=1e-6)


def test_probe_separates_a_linearly_separable_set() -> None:
    g = torch.Generator().manual_seed(3)
    hidden = 10
    w = torch.randn(hidden, generator=g)
    points = torch.randn(200, hidden, generator=g) * 2 + 5  # offset from the origin: the probe must use a bias
    score = (points - 5) @ w
    keep = score.abs() > 0.5  # a margin
    positive, negative = points[keep & (score > 0)], points[keep & (score < 0)]
    assert len(positive) > 20 and len(negative) > 20
    got = probe_direction(positive, negative)
    threshold_low, threshold_high = (negative @ got).max(), (positive @ got).min()
    assert threshold_low < threshold_high, "the probe direction must separate the two sides"
    assert float(torch.nn.functional.cosine_similarity(got, w, dim=0)) > 0.8
    unit = got.double() / got.double().norm()
    assert got.norm().item() == pytest.approx(float(mean_difference(positive, negative).double() @ unit), rel=1e-5)


@pytest.mark.parametrize("method", ["mean-diff", "pca", "probe"])
def test_methods_are_deterministic(method: str) -> None:
    positive, negative, _ = paired(4, n=30)
    first = direction(method, positive, negative)
    second = direction(method, positive.clone(), negative.clone())
    assert first.dtype == torch.float32
    assert torch.equal(first, second)
    assert first.numpy().tobytes() == second.numpy().tobytes()


def test_method_errors() -> None:
    a, b = torch.zeros(3, 4), torch.ones(3, 4)
    with pytest.raises(ConfigError, match="unknown method 'lda'; choose one of mean-diff, pca, probe"):
        direction("lda", a, b)
    with pytest.raises(ConfigError, match=r"must be \(n, hidden\) with one hidden size, got \(3, 4\) and \(3, 5\)"):
        mean_difference(a, torch.ones(3, 5))
    with pytest.raises(ConfigError, match="at least one positive and one negative"):
        mean_difference(torch.zeros(0, 4), b)
    with pytest.raises(ConfigError, match="paired activations"):
        pca_direction(a, torch.ones(2, 4))
