"""Per-row steering: each row of a batch carries its own vectors, strengths, layers and positions.

A serving batch mixes requests: one row steers with vector A at layer 12 on its answer, another with B at two layers
on every token, a third not at all. The hooks here add, at each hooked block, ``sum(w * delta * positions)`` of that
row's own terms and leave every row without a term at that block untouched (``torch.where`` selects the block's
own output), so an unsteered row is bit-identical to the plain model run on the same batch.

Positions follow :mod:`steerlab.core.positions`, per row, counted in real tokens (padding excluded) from the 2-D
attention mask over cache and chunk: the caller says how many real tokens each row's prompt has, which is what a
batcher knows and what stays true when rows join a shared, left-padded KV cache at different steps. Interventions
are the :class:`~steerlab.core.hooks.Intervention` protocol of the ordinary hooks; a source used by several rows is
evaluated once per block.

Example (any causal LM; here the embedded default)::

    from steerlab import load_model, SteeringVector
    from steerlab.core.rows import apply_row_steering, row_term
    model, tok = load_model()
    v = SteeringVector.load("survival.safetensors")
    batch = tok(["Hi", "Hello there"], return_tensors="pt", padding=True)
    rows = [[row_term(v, 0.5, positions="answer")], []]       # row 0 steered, row 1 plain
    with apply_row_steering(model, rows, prompt_lengths=[1, 2]):
        logits = model(**batch).logits
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steerlab.core.hooks import Intervention, SteeringHandle, SteeringSource, as_intervention, call_mask
from steerlab.core.positions import Positions, check_positions, position_mask
from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError
from steerlab.models import Target, base_model, hidden_size, num_layers, target_module


@dataclass(frozen=True, eq=False)
class RowTerm:
    """One addition for one row: ``weight * source.delta`` at ``layers``, on ``positions``, at ``target`` (the
    block output, its attention or its MLP output)."""

    source: Intervention
    weight: float
    layers: frozenset[int]
    positions: Positions
    target: Target = "residual"


def row_term(source: SteeringSource, strength: float | None = None, *, layers: Iterable[int] | None = None,
             positions: Positions | str | None = None) -> RowTerm:
    """A term for one row, with the defaults of :func:`steerlab.steer`: a vector's recipe, else 1.0, every layer
    the source defines, ``"all"`` and the block output."""
    recipe = source.recipe if isinstance(source, SteeringVector) else None
    intervention = as_intervention(source)
    if strength is None:
        strength = recipe.strength if recipe is not None else 1.0
    if positions is None:
        positions = recipe.positions if recipe is not None else "all"
    if layers is None:
        layers = recipe.layers if recipe is not None else intervention.layer_indices
    chosen = frozenset(layers)
    missing = sorted(chosen - set(intervention.layer_indices))
    if missing:
        raise ConfigError(f"no steering defined at layer(s) {missing} (it has {intervention.layer_indices})")
    if not chosen:
        raise ConfigError("a steering term needs at least one layer")
    return RowTerm(intervention, float(strength), chosen, check_positions(positions),
                   recipe.target if recipe is not None else "residual")


@dataclass
class _RowPositions:
    """The current call's real-token index and padding mask, per row, set by a pre-hook on the base model."""

    index: torch.Tensor | None = None  # (batch, chunk) how many real tokens precede each column in its row
    real: torch.Tensor | None = None  # (batch, chunk) True where the column is not padding

    def update(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        full, offset, _ = call_mask(args, kwargs)
        self.index = (full.long().cumsum(dim=1) - 1)[:, offset:]
        self.real = full[:, offset:]

    def mask(self, positions: Positions, prompt_lengths: torch.Tensor, turn_starts: torch.Tensor) -> torch.Tensor:
        """(batch, chunk, 1) True where ``positions`` select the column in its row; padding never selected."""
        assert self.index is not None and self.real is not None
        return position_mask(positions, self.index, prompt_lengths, turn_starts, self.real)


def _check(model: nn.Module, rows: Sequence[Sequence[RowTerm]]) -> None:
    depth, width = num_layers(model), hidden_size(model)
    for number, terms in enumerate(rows):
        for term in terms:
            if term.source.hidden_size != width:
                raise ConfigError(f"row {number}: steering has hidden size {term.source.hidden_size} but the "
                                  f"model has {width}")
            outside = sorted(layer for layer in term.layers if not 0 <= layer < depth)
            if outside:
                raise ConfigError(f"row {number}: layer(s) {outside} out of range: the model has layers "
                                  f"0..{depth - 1}")


def apply_row_steering(model: nn.Module, rows: Sequence[Sequence[RowTerm]], prompt_lengths: Sequence[int],
                       turn_starts: Sequence[int] | None = None) -> SteeringHandle:
    """Hook one list of terms per batch row into ``model``; remove with ``.remove()`` or a ``with`` block.

    ``rows[i]`` steers row ``i`` of every forward call made while the hooks live (an empty list: not steered);
    ``prompt_lengths[i]`` is the number of real tokens in row ``i``'s prompt, for ``answer``, ``prompt`` and
    ``last_prompt``; ``turn_starts[i]`` the number of real tokens before its user turn, for ``turn``. A term of
    weight 0 adds nothing and hooks nothing.
    """
    if len(rows) != len(prompt_lengths):
        raise ConfigError(f"{len(rows)} rows of steering but {len(prompt_lengths)} prompt lengths")
    if turn_starts is not None and len(turn_starts) != len(rows):
        raise ConfigError(f"{len(rows)} rows of steering but {len(turn_starts)} turn starts")
    if turn_starts is None and any(term.positions == "turn" for terms in rows for term in terms):
        raise ConfigError("positions 'turn' need turn_starts (real tokens before each row's user turn)")
    _check(model, rows)
    batch = len(rows)
    lengths = torch.tensor([int(n) for n in prompt_lengths], dtype=torch.long)
    turns = torch.tensor([int(n) for n in turn_starts or [0] * batch], dtype=torch.long)
    # (layer, target) -> (source, positions) -> per-row weights: a source shared by rows is evaluated once per block.
    plan: dict[tuple[int, Target], dict[tuple[int, Positions], tuple[Intervention, list[float]]]] = {}
    for number, terms in enumerate(rows):
        for term in terms:
            if term.weight == 0.0:
                continue
            for layer in term.layers:
                key = (id(term.source), term.positions)
                _, weights = plan.setdefault((layer, term.target), {}).setdefault(key, (term.source, [0.0] * batch))
                weights[number] += term.weight
    state = _RowPositions()
    handles: list[RemovableHandle] = []
    if any(positions != "all" for groups in plan.values() for _, positions in groups):

        def track(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            state.update(args, kwargs)

        handles.append(base_model(model).register_forward_pre_hook(track, with_kwargs=True))

    for (layer, target), groups in sorted(plan.items()):
        parts = [(source, positions, torch.tensor(weights)) for (_, positions), (source, weights) in groups.items()]
        steered = torch.tensor([any(w[row] != 0.0 for _, _, w in parts) for row in range(batch)])

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any, layer: int = layer,
                 parts: list[tuple[Intervention, Positions, torch.Tensor]] = parts,
                 steered: torch.Tensor = steered) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[0] != batch:
                raise ConfigError(f"row steering was set up for {batch} rows but the model got {hidden.shape[0]}")
            add: torch.Tensor | None = None
            for source, positions, weights in parts:
                part = weights.to(device=hidden.device, dtype=hidden.dtype)[:, None, None] * source.delta(layer,
                                                                                                           hidden)
                if positions != "all":
                    part = part * state.mask(positions, lengths, turns).to(device=hidden.device,
                                                                           dtype=hidden.dtype)
                add = part if add is None else add + part
            assert add is not None
            out = torch.where(steered.to(hidden.device)[:, None, None], hidden + add, hidden)
            return (out, *output[1:]) if isinstance(output, tuple) else out

        # Prepended, as in core.hooks: recorders registered earlier see the steered output the next block gets.
        handles.append(target_module(model, layer, target).register_forward_hook(hook, prepend=True))
    return SteeringHandle(handles, sorted({layer for layer, _ in plan}))
