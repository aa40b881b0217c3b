"""Re-running only the blocks above a steered layer.

Steering at layer L changes nothing below L, so a sweep over strengths need not recompute the prompt, nor the layers
up to L. One unsteered forward pass over the steered chunk (the last prompt token, or the answer tokens) records
what every decoder block received: its positional and keyword arguments (attention mask, rotary embeddings, cache)
and its output. A grid point then starts from block L's recorded output plus ``strength * vector`` and runs blocks
L+1.. only, for all strengths at once (the batch is repeated once per strength, the cache with it). Steering inside
block L (its attention or MLP output) starts from block L's recorded input instead and runs blocks L.. .

Architecture-independent: the recorded arguments are replayed as the model itself passed them, so per-layer masks
(sliding windows) and per-layer rotary tables come along.

Two layouts for the strengths of one replay, and mixes of them. Stacked: the batch holds each row ``repeat`` times,
and so must the cache, which every block then concatenates with the new keys: ``repeat`` copies of the whole prompt,
per block. Side by side: a row holds ``side`` copies of the chunk one after the other in the sequence, under a
block-diagonal mask (each copy sees the cached prompt and itself, with its own positions), so the cache is repeated
only ``repeat / side`` times. Side by side pays while the copies together are short next to the cached prompt (a
steered last token, under letter scoring, puts every strength in one row), since the masked-out blocks of its
attention grow with the square of their length.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Cache

from steerlab.models import Target, decoder_blocks, target_module


def _map(value: Any, tensor: Callable[[torch.Tensor], torch.Tensor], cache: Cache | None) -> Any:
    """A recorded block argument with ``tensor`` applied to every tensor in it and ``cache`` for the model's cache."""
    if isinstance(value, torch.Tensor):
        return tensor(value)
    if isinstance(value, Cache):
        return cache
    if isinstance(value, tuple):
        return tuple(_map(v, tensor, cache) for v in value)
    if isinstance(value, list):
        return [_map(v, tensor, cache) for v in value]
    if isinstance(value, dict):
        return {k: _map(v, tensor, cache) for k, v in value.items()}
    return value


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a recorded block argument."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _expand(value: Any, batch: int, repeat: int, cache: Cache | None) -> Any:
    """Repeat every per-row tensor ``repeat`` times (rows stay grouped), swap in ``cache`` for the model's cache."""
    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(repeat, dim=0) if t.ndim and t.shape[0] == batch and repeat > 1 else t

    return _map(value, rows, cache)


def _side_by_side(value: Any, width: int, copies: int, past: int, cache: Cache | None) -> Any:
    """A block argument recorded for a chunk of ``width`` tokens after ``past`` cached ones, made for ``copies``
    copies of the chunk side by side in the sequence: masks become block-diagonal, per-token tensors (positions,
    rotary tables) repeat along the sequence, ``cache`` replaces the model's cache."""
    def laid_out(t: torch.Tensor) -> torch.Tensor:
        if _is_mask(t, width, past):
            return block_diagonal(t, copies, past)
        if t.ndim >= 2 and t.shape[1] == width:
            return t.repeat(1, copies, *(1,) * (t.ndim - 2))
        if t.ndim == 1 and t.shape[0] == width:
            return t.repeat(copies)
        return t

    return _map(value, laid_out, cache)


def _is_mask(t: torch.Tensor, width: int, past: int) -> bool:
    return t.ndim == 4 and t.shape[-2:] == (width, past + width)


def block_diagonal(mask: torch.Tensor, copies: int, past: int) -> torch.Tensor:
    """A (batch, heads, width, past + width) attention mask (boolean, or additive with 0 where attended) for
    ``copies`` copies of the chunk one after another: each sees the past as before and, of the chunk, only its own
    copy."""
    width = mask.shape[-2]
    hidden: bool | float = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
    out = mask.new_full((*mask.shape[:2], copies * width, past + copies * width), hidden)
    for k in range(copies):
        rows = slice(k * width, (k + 1) * width)
        out[:, :, rows, :past] = mask[..., :past]
        out[:, :, rows, past + k * width:past + (k + 1) * width] = mask[..., past:]
    return out


def masks_recorded(recording: Recording, layer: int, width: int, past: int) -> bool:
    """Whether every block above ``layer`` was given an explicit (.., width, past + width) attention mask, which
    the side-by-side layout needs (a block that built its own causal mask would let the copies see each other)."""
    return all(any(_is_mask(t, width, past) for t in _tensors(recording.inputs[k]))
               for k in range(layer + 1, len(recording.inputs)))


def stacked_to_side_by_side(hidden: torch.Tensor, side: int) -> torch.Tensor:
    """(rows, width, ...), each ``side`` consecutive rows copies of one chunk -> (rows / side, side * width, ...)."""
    return hidden.reshape(hidden.shape[0] // side, side * hidden.shape[1], *hidden.shape[2:])


def side_by_side_to_stacked(hidden: torch.Tensor, side: int) -> torch.Tensor:
    """The inverse of :func:`stacked_to_side_by_side`."""
    return hidden.reshape(hidden.shape[0] * side, hidden.shape[1] // side, *hidden.shape[2:])


@dataclass
class Recording:
    """What each block received and returned during one forward pass."""

    inputs: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)


@contextmanager
def record(model: nn.Module) -> Iterator[Recording]:
    """Record every block's arguments and output during the forward passes inside the block."""
    recording = Recording()
    handles = []
    for index, block in enumerate(decoder_blocks(model)):

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], index: int = index) -> None:
            recording.inputs[index] = (args, dict(kwargs))

        def post(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any,
                 index: int = index) -> None:
            recording.outputs[index] = output[0] if isinstance(output, tuple) else output

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    try:
        yield recording
    finally:
        for handle in handles:
            handle.remove()


def expanded_cache(cache: Cache, repeat: int) -> Cache:
    """A copy of ``cache`` with each row repeated ``repeat`` times (the original is left as it is)."""
    copied = copy.deepcopy(cache)
    if repeat > 1:
        copied.batch_repeat_interleave(repeat)
    return copied


@contextmanager
def adding(model: nn.Module, target: Target, additions: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Hooks that add ``additions[layer]`` to the output of ``target`` in block ``layer``, for the block's duration."""
    handles = []
    for layer, add in additions.items():

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any, add: torch.Tensor = add) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            steered = hidden + add.to(hidden.device)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        handles.append(target_module(model, layer, target).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def block_input(recording: Recording, index: int) -> torch.Tensor:
    """The hidden states block ``index`` received in the recorded pass."""
    args, kwargs = recording.inputs[index]
    hidden = args[0] if args else kwargs["hidden_states"]
    assert isinstance(hidden, torch.Tensor)
    return hidden


def run_above(
    model: nn.Module,
    recording: Recording,
    layer: int,
    hidden: torch.Tensor,
    *,
    repeat: int,
    cache: Cache | None,
    additions: Mapping[int, torch.Tensor] | None = None,
    side: int = 1,
    past: int = 0,
) -> torch.Tensor:
    """Blocks ``layer + 1 ..`` applied to ``hidden``, the (batch * repeat, seq, hidden) output of block ``layer``
    (``layer = -1``: every block, from the embeddings).

    ``additions[k]`` (broadcastable to ``hidden``) is added to block ``k``'s output on the way up: steering at
    several layers replays from the lowest one.

    ``cache`` must hold, for every block above ``layer``, the same past as the recorded pass had, with rows repeated
    ``repeat`` times (see :func:`expanded_cache`); the blocks above ``layer`` append to their cache layers, so the
    caller crops those before the next replay.

    With ``side`` > 1 (a divisor of ``repeat``) ``hidden`` and ``additions`` come with ``side`` copies of each
    chunk side by side, (batch * repeat / side, side * seq, hidden), after ``past`` cached tokens, and ``cache`` holds
    each row ``repeat / side`` times; the result is laid out the same way.
    """
    blocks = decoder_blocks(model)
    batch = hidden.shape[0] * side // repeat

    def adapt(value: Any) -> Any:
        stacked = _expand(value, batch, repeat // side, cache)
        return stacked if side == 1 else _side_by_side(stacked, hidden.shape[1] // side, side, past, cache)

    for index in range(layer + 1, len(blocks)):
        args, kwargs = recording.inputs[index]
        kwargs = adapt(kwargs)
        if args:
            out = blocks[index](hidden, *adapt(args[1:]), **kwargs)
        else:
            out = blocks[index](**{**kwargs, "hidden_states": hidden})
        hidden = out[0] if isinstance(out, tuple) else out
        if additions is not None and index in additions:
            hidden = hidden + additions[index].to(hidden.device)  # blocks of a device map sit on several devices
    return hidden
