"""How strongly a prompt's hidden state matches a condition direction: three scores.

- ``cosine``: the signed cosine ``cos(h, c)``. Recommended for topics: an unfamiliar input lies near no direction,
  scores near 0 and so fails closed under ``>``.
- ``cast``: CAST's ``cos(h, tanh(P h))`` with ``P = c c^T / (c . c)`` (Lee et al., ICLR 2025). Because ``P h`` is a
  multiple of ``c``, this is close to ``|cos(h, c)|``: it cannot tell which side of the direction ``h`` lies on.
- ``probe``: ``sigmoid(a (c . h) + b)``, a probability whose ``a``, ``b`` are fitted (Platt scaling) on the
  training prompts' projections.

Example::

    import torch
    from steerlab.conditional.scores import score
    h, c = torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 0.0])
    assert abs(float(score("cosine", h, c)[0]) - 0.6) < 1e-6
"""

from __future__ import annotations

from typing import Literal

import torch

from steerlab.errors import ConfigError

Score = Literal["cosine", "cast", "probe"]
SCORES: tuple[Score, ...] = ("cosine", "cast", "probe")
_EPS = 1e-12


def check_score(value: str) -> Score:
    for name in SCORES:
        if value == name:
            return name
    raise ConfigError(f"unknown score '{value}'; choose one of {', '.join(SCORES)}")


def score(kind: Score, hidden: torch.Tensor, direction: torch.Tensor,
          platt: tuple[float, float] = (1.0, 0.0)) -> torch.Tensor:
    """Scores of the rows of ``hidden`` (n, hidden) against ``direction`` (hidden,), in float64, shape (n,)."""
    h, c = hidden.double(), direction.double().to(hidden.device)
    if kind == "cosine":
        return (h @ c) / (h.norm(dim=-1) * c.norm()).clamp(min=_EPS)
    if kind == "cast":
        projected = torch.tanh(((h @ c) / (c @ c).clamp(min=_EPS))[:, None] * c)
        return (h * projected).sum(-1) / (h.norm(dim=-1) * projected.norm(dim=-1)).clamp(min=_EPS)
    if kind == "probe":
        slope, intercept = platt
        return torch.sigmoid(slope * (h @ c) + intercept)
    raise ConfigError(f"unknown score '{kind}'; choose one of {', '.join(SCORES)}")


def fit_platt(positive: torch.Tensor, negative: torch.Tensor, direction: torch.Tensor,
              *, steps: int = 100) -> tuple[float, float]:
    """``(a, b)`` of a 1-D logistic regression of the label on the projection ``c . h`` (deterministic L-BFGS)."""
    projections = torch.cat([positive.double() @ direction.double(), negative.double() @ direction.double()])
    labels = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).double()
    scale = projections.std().clamp(min=_EPS) if len(projections) > 1 else torch.tensor(1.0, dtype=torch.float64)
    x = projections / scale  # conditioning: the slope is found in units of the projections' spread
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        # A light L2 on the slope keeps it finite when the two sets separate perfectly.
        value = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * x + params[1], labels)
        value = value + 1e-3 * params[0] ** 2
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    slope, intercept = params.detach()
    return float(slope / scale), float(intercept)
