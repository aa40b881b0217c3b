"""Steering hooks: add interventions to the output of decoder blocks, reversibly.

Layer ``i`` is the output of decoder block ``i`` (0-based), i.e. ``hidden_states[i + 1]`` in transformers.
Nothing in the user's model is replaced or mutated: steering is a set of forward hooks that are always removed.

Positions are absolute columns of the (left-padded) sequence, read from the KV cache length, never positions
within the current forward chunk: during cached generation each step feeds one token, and a chunk-relative index
would stop steering after the prompt (the bug other libraries shipped). With left padding every prompt of a batch
ends at the same column, so "prompt", "generated" and "last prompt token" mean the same thing for every row.

Example (runs on any causal LM; here the embedded default)::

    from steerlab import load_model, steer, SteeringVector
    model, tok = load_model()
    vector = SteeringVector.load("survival.safetensors")
    with steer(model, vector, strength=4.0, positions="generated"):
        out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=20)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError
from steerlab.models import base_model, decoder_blocks, hidden_size, num_layers

Positions = Literal["all", "prompt", "generated", "last_prompt"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated", "last_prompt")


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
    """Where the current forward chunk starts in the sequence, and how long the prompt was."""

    offset: int = 0
    prompt_length: int = 0
    uncached: torch.Tensor | None = None  # input ids of the last call made without a KV cache


def _input_ids(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    ids = kwargs.get("input_ids")
    if ids is None and args and isinstance(args[0], torch.Tensor):
        ids = args[0]
    return ids if isinstance(ids, torch.Tensor) else None


def _continues(previous: torch.Tensor | None, ids: torch.Tensor | None) -> bool:
    """Whether ``ids`` is ``previous`` plus one token: a step of generation without a KV cache."""
    return (previous is not None and ids is not None and ids.shape[0] == previous.shape[0]
            and ids.shape[1] == previous.shape[1] + 1 and torch.equal(ids[:, :-1], previous))


def _chunk_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    ids = kwargs.get("input_ids")
    if ids is None and args and isinstance(args[0], torch.Tensor):
        ids = args[0]
    if ids is not None:
        return int(ids.shape[1])
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        raise ConfigError("steering with positions needs input_ids or inputs_embeds in the model call")
    return int(embeds.shape[1])


def _column_mask(state: _PositionState, positions: str, length: int, device: torch.device) -> torch.Tensor:
    columns = torch.arange(state.offset, state.offset + length, device=device)
    if positions == "prompt":
        keep = columns < state.prompt_length
    elif positions == "generated":
        keep = columns >= state.prompt_length
    else:
        keep = columns == state.prompt_length - 1
    return keep.view(1, length, 1)


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
    strength: float = 1.0,
    *,
    layers: Iterable[int] | None = None,
    positions: Positions | str = "all",
) -> SteeringHandle:
    """Hook ``steering`` into ``model``: each hooked block's output becomes ``h + sum(w * strength * delta)``.

    ``steering`` is one vector or learned model, or a list of ``(vector_or_model, weight)``. ``layers`` restricts
    steering to those layers (default: every layer the sources define). A layer whose total weight is zero gets no
    hook at all, so strength 0 leaves the logits bit-identical.
    """
    if positions not in POSITIONS:
        raise ConfigError(f"unknown positions '{positions}'; choose one of {', '.join(POSITIONS)}")
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
    state = _PositionState()
    if positions != "all" and by_layer:

        def track(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # transformers 5.24 renamed the base model's ``past_key_values`` argument to ``cache``.
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            state.offset = int(cache.get_seq_length()) if cache is not None else 0
            if state.offset == 0:
                # Without a cache every generation step re-feeds the whole sequence from column 0: the prompt is
                # still the one the first step saw, not everything fed so far.
                ids = _input_ids(args, kwargs) if cache is None else None
                if not _continues(state.uncached, ids):
                    state.prompt_length = _chunk_length(args, kwargs)
                state.uncached = ids

        handles.append(base_model(model).register_forward_pre_hook(track, with_kwargs=True))

    blocks = decoder_blocks(model)
    for layer, terms in sorted(by_layer.items()):

        def hook(
            module: nn.Module, args: tuple[Any, ...], output: Any, terms: list[tuple[Intervention, float]] = terms,
            layer: int = layer,
        ) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            add = sum(weight * source.delta(layer, hidden) for source, weight in terms)
            if positions != "all":
                add = add * _column_mask(state, positions, hidden.shape[1], hidden.device).to(hidden.dtype)
            steered = hidden + add
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        # Prepended, so that hooks registered earlier (transformers' own output_hidden_states recorder, installed
        # on first use) see the steered output that the next block receives, not the block's raw output.
        handles.append(blocks[layer].register_forward_hook(hook, prepend=True))
    return SteeringHandle(handles, sorted(by_layer))


def steer(
    model: nn.Module,
    steering: Steering,
    strength: float = 1.0,
    *,
    layers: Iterable[int] | None = None,
    positions: Positions | str = "all",
) -> SteeringHandle:
    """Context-manager form of :func:`apply_steering`: the hooks are removed when the block exits, even on error."""
    return apply_steering(model, steering, strength, layers=layers, positions=positions)
