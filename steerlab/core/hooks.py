"""Steering hooks: add interventions to the output of decoder blocks, reversibly.

Layer ``i`` is the output of decoder block ``i`` (0-based), i.e. ``hidden_states[i + 1]`` in transformers. With
``target="attn"`` or ``"mlp"`` the addition goes to that block's attention or MLP output instead.
Nothing in the user's model is replaced or mutated: steering is a set of forward hooks that are always removed.

Positions (see :mod:`steerlab.core.positions`) are absolute columns, read per row from the attention mask and the
KV cache length, never positions within the current forward chunk: during cached generation each step feeds one
token, and a chunk-relative index would stop steering after the prompt (the bug other libraries shipped).

Example (runs on any causal LM; here the embedded default)::

    from steerlab import load_model, steer, SteeringVector
    model, tok = load_model()
    vector = SteeringVector.load("survival.safetensors")
    with steer(model, vector, strength=1.0, positions="answer"):
        out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=20)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steerlab.core.positions import Positions, check_positions, position_mask
from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError
from steerlab.models import Target, base_model, check_target, hidden_size, num_layers, target_module


@runtime_checkable
class Intervention(Protocol):
    """Anything that says, per layer, what to add to a block's output (a learned PSR model, for example)."""

    @property
    def layer_indices(self) -> list[int]: ...

    @property
    def hidden_size(self) -> int: ...

    def delta(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The addition at ``layer`` for ``hidden`` of shape (batch, seq, hidden), broadcastable to it."""
        ...


@dataclass
class _VectorIntervention:
    vector: SteeringVector
    _cast: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def layer_indices(self) -> list[int]:
        return sorted(self.vector.layers)

    @property
    def hidden_size(self) -> int:
        return self.vector.hidden_size

    def delta(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        cached = self._cast.get(layer)
        if cached is None or cached.dtype != hidden.dtype or cached.device != hidden.device:
            cached = self.vector.layers[layer].to(device=hidden.device, dtype=hidden.dtype)
            self._cast[layer] = cached
        return cached


SteeringSource = SteeringVector | Intervention
Steering = SteeringSource | Sequence[tuple[SteeringSource, float]]


def as_intervention(source: SteeringSource) -> Intervention:
    """A steering vector or a learned model, seen through the one interface the hooks use."""
    if isinstance(source, SteeringVector):
        return _VectorIntervention(source)
    if isinstance(source, Intervention):
        return source
    raise ConfigError(f"cannot steer with an object of type {type(source).__name__}")


@dataclass
class _PositionState:
    """Where the prompt of each row ends, as an absolute column, for the sequence being processed.

    The prompt is what the first call of a sequence feeds (plus any past already in a caller's KV cache), extended
    by later calls of more than one token per row (chunked prefill); calls of one token per row are generation.
    """

    prompt_end: torch.Tensor | None = None  # (batch,) column after each row's last real prompt token
    seen: int = 0  # columns processed so far in this sequence
    uncached: torch.Tensor | None = None  # input ids of the last call made without a KV cache
    explicit: torch.Tensor | None = None  # caller-given prompt lengths in real tokens, per row
    turn_tokens: torch.Tensor | None = None  # caller-given real tokens before the user's turn, per row
    turn_start: torch.Tensor | None = None  # (batch,) column of each row's first turn token
    columns: torch.Tensor | None = None  # (batch, chunk) absolute columns of the current call
    real: torch.Tensor | None = None  # (batch, chunk) True where the current call's token is not padding


def _input_ids(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    ids = kwargs.get("input_ids")
    if ids is None and args and isinstance(args[0], torch.Tensor):
        ids = args[0]
    return ids if isinstance(ids, torch.Tensor) else None


def _continues(previous: torch.Tensor | None, ids: torch.Tensor | None) -> bool:
    """Whether ``ids`` is ``previous`` plus one token: a step of generation without a KV cache."""
    return (previous is not None and ids is not None and ids.shape[0] == previous.shape[0]
            and ids.shape[1] == previous.shape[1] + 1 and torch.equal(ids[:, :-1], previous))


def _chunk_shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, torch.device]:
    ids = _input_ids(args, kwargs)
    if ids is not None:
        return int(ids.shape[0]), int(ids.shape[1]), ids.device
    embeds = kwargs.get("inputs_embeds")
    if not isinstance(embeds, torch.Tensor):
        raise ConfigError("steering with positions needs input_ids or inputs_embeds in the model call")
    return int(embeds.shape[0]), int(embeds.shape[1]), embeds.device


def call_mask(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, int, Any]:
    """For a forward call of the base model: which columns of the whole sequence so far (cached past and this
    call's tokens) are real tokens, as a (batch, past + chunk) bool mask; the past's length; the KV cache."""
    batch, length, device = _chunk_shape(args, kwargs)
    # transformers 5.24 renamed the base model's ``past_key_values`` argument to ``cache``.
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    offset = int(cache.get_seq_length()) if cache is not None else 0
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == (batch, offset + length):
        return mask.to(device=device).bool(), offset, cache
    # No 2-D padding mask (or a 4-D one built by the caller): every column is real.
    return torch.ones((batch, offset + length), dtype=torch.bool, device=device), offset, cache


def _track(state: _PositionState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Update ``state`` before a forward call of the base model."""
    full, offset, cache = call_mask(args, kwargs)
    batch, length, device = full.shape[0], full.shape[1] - offset, full.device
    state.columns = torch.arange(offset, offset + length, device=device).expand(batch, length)
    state.real = full[:, offset:]
    ids = _input_ids(args, kwargs) if cache is None else None
    if cache is None and _continues(state.uncached, ids):
        state.uncached = ids  # generation without a cache re-feeds everything: the prompt is unchanged
        return
    state.uncached = ids
    new_sequence = (state.prompt_end is None or offset != state.seen or offset == 0
                    or state.prompt_end.shape[0] != batch)
    if new_sequence or length > 1:
        if state.turn_tokens is not None:
            # The turn starts at its first token: the (turn_tokens + 1)-th real one.
            state.turn_start = _column_after(full, state.turn_tokens + 1, offset + length, "turn_starts") - 1
        # The column after each row's last real token so far: the prompt (with any past from a caller's cache).
        last = torch.where(full, torch.arange(offset + length, device=device), -1).amax(dim=1)
        state.prompt_end = last + 1
        if state.explicit is not None:
            # A row whose prompt goes on past this call: all of it is prompt, its last prompt token is still ahead.
            state.prompt_end = _column_after(full, state.explicit, offset + length, "prompt_lengths")
    state.seen = offset + length


def _column_after(full: torch.Tensor, counts: torch.Tensor, width: int, name: str) -> torch.Tensor:
    """(batch,) the column after each row's ``counts[row]``-th real token; ``width + 1`` where this call's columns
    do not reach it yet."""
    if counts.shape[0] != full.shape[0]:
        raise ConfigError(f"{name} has {counts.shape[0]} rows but the batch has {full.shape[0]}")
    reached = full.long().cumsum(dim=1) >= counts.to(full.device)[:, None]
    return torch.where(reached.any(dim=1), reached.float().argmax(dim=1).long() + 1,
                       torch.full((full.shape[0],), width + 1, dtype=torch.long, device=full.device))


def _position_mask(state: _PositionState, positions: Positions) -> torch.Tensor:
    """(batch, chunk, 1) mask of the current call's steered positions; padding is steered only under ``all``."""
    assert state.columns is not None and state.real is not None and state.prompt_end is not None
    return position_mask(positions, state.columns, state.prompt_end, state.turn_start, state.real)


class SteeringHandle:
    """Live hooks of one steering set-up; ``remove()`` (or leaving the ``with`` block) restores the model."""

    def __init__(self, handles: list[RemovableHandle], layers: list[int]) -> None:
        self._handles = handles
        self.layers = layers

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _normalise(steering: Steering, strength: float) -> list[tuple[Intervention, float]]:
    if isinstance(steering, SteeringVector | Intervention):
        return [(as_intervention(steering), strength)]
    return [(as_intervention(source), strength * float(weight)) for source, weight in steering]


def apply_steering(
    model: nn.Module,
    steering: Steering,
    strength: float | None = None,
    *,
    layers: Iterable[int] | None = None,
    positions: Positions | str | None = None,
    prompt_lengths: Sequence[int] | None = None,
    turn_starts: Sequence[int] | None = None,
    target: Target | str | None = None,
) -> SteeringHandle:
    """Hook ``steering`` into ``model``: each hooked block's output becomes ``h + sum(w * strength * delta)``.

    ``steering`` is one vector or learned model, or a list of ``(vector_or_model, weight)``. ``layers`` restricts
    steering to those layers (default: every layer the sources define). A layer whose total weight is zero gets no
    hook at all, so strength 0 leaves the logits bit-identical.

    A single vector that carries a recipe (``steerlab run`` writes one) is applied as it was selected: ``strength``,
    ``positions``, ``layers`` and ``target`` default to the recipe's; otherwise to 1.0, ``"all"``, every layer and
    ``"residual"`` (the block's output; ``"attn"`` / ``"mlp"`` hook the block's attention / MLP output).

    Positions are per row, from the attention mask and the cache length: left or right padding, chunked prefill and
    a caller's prefix cache all give the same steered tokens as one full forward. ``prompt_lengths`` (real tokens
    per row) says where each row's prompt ends when one call holds prompt and answer together; chunked prefill needs
    it for ``answer`` and ``last_prompt``, since no hook can tell that a chunk is not the prompt's last.
    ``turn_starts`` (real tokens before the user's last turn, per row) is required by ``turn``.
    """
    recipe = steering.recipe if isinstance(steering, SteeringVector) else None
    if strength is None:
        strength = recipe.strength if recipe is not None else 1.0
    if positions is None:
        positions = recipe.positions if recipe is not None else "all"
    if layers is None and recipe is not None:
        layers = recipe.layers
    if target is None:
        target = recipe.target if recipe is not None else "residual"
    target = check_target(target)
    positions = check_positions(positions)
    if positions == "turn" and turn_starts is None:
        raise ConfigError("positions 'turn' need turn_starts= (real tokens before the user's turn, per row): "
                          "steerlab.generate computes them, or use PromptStyle.turn_start")
    sources = _normalise(steering, strength)
    depth, width = num_layers(model), hidden_size(model)
    for source, _ in sources:
        if source.hidden_size != width:
            raise ConfigError(f"steering has hidden size {source.hidden_size} but the model has {width}")
    wanted = None if layers is None else set(layers)
    by_layer: dict[int, list[tuple[Intervention, float]]] = {}
    for source, weight in sources:
        for layer in source.layer_indices:
            if not 0 <= layer < depth:
                raise ConfigError(f"layer {layer} is out of range: the model has layers 0..{depth - 1}")
            if weight != 0.0 and (wanted is None or layer in wanted):
                by_layer.setdefault(layer, []).append((source, weight))
    if wanted is not None:
        missing = sorted(wanted - {layer for source, _ in sources for layer in source.layer_indices})
        if missing:
            raise ConfigError(f"no steering defined at layer(s) {missing}")

    handles: list[RemovableHandle] = []
    state = _PositionState(explicit=None if prompt_lengths is None else torch.tensor(list(prompt_lengths)),
                           turn_tokens=None if turn_starts is None else torch.tensor(list(turn_starts)))
    if positions != "all" and by_layer:

        def track(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            _track(state, args, kwargs)

        handles.append(base_model(model).register_forward_pre_hook(track, with_kwargs=True))

    for layer, terms in sorted(by_layer.items()):

        def hook(
            module: nn.Module, args: tuple[Any, ...], output: Any, terms: list[tuple[Intervention, float]] = terms,
            layer: int = layer,
        ) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            add = sum(weight * source.delta(layer, hidden) for source, weight in terms)
            if positions != "all":
                add = add * _position_mask(state, positions).to(device=hidden.device, dtype=hidden.dtype)
            steered = hidden + add
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        # Prepended, so that hooks registered earlier (transformers' own output_hidden_states recorder, installed
        # on first use) see the steered output that the next block receives, not the block's raw output.
        handles.append(target_module(model, layer, target).register_forward_hook(hook, prepend=True))
    return SteeringHandle(handles, sorted(by_layer))


# ``with steer(model, vector): ...`` reads better than apply_steering; the handle removes the hooks on exit, even on
# error.
steer = apply_steering
