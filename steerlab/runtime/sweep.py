"""Multiple-choice scores over a grid of layers x strengths, with nothing computed twice.

Each item is an unsteered ``prefix`` (computed once, its KV cache shared by the item's choices) and one steered
``chunk`` per scored sequence:

- letter scoring, last-token steering: prefix = prompt minus its last token, chunk = the last token;
- choice likelihood, answer steering: prefix = question minus its last token, chunk = last question token + choice;
- "all positions" steering: no prefix, the chunk is the whole text.

One unsteered pass over the chunks records every block's inputs and outputs (and gives the unsteered scores). A grid
point at layer L then only runs blocks L+1.. on ``recorded output of L + strength * vector``, for all strengths in one
batch. The result equals a full forward with a steering hook on the chunk's positions (tested), at a fraction of the
cost: with last-token steering a grid point costs one token through the layers above L.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

from steerlab.core.vector import SteeringVector
from steerlab.errors import ConfigError
from steerlab.models import Target, base_model, cache_kwarg, check_target, final_logits, num_layers
from steerlab.progress import Progress, silent
from steerlab.runtime import batching
from steerlab.runtime.replay import (
    Recording,
    adding,
    block_input,
    expanded_cache,
    masks_recorded,
    record,
    run_above,
    side_by_side_to_stacked,
    stacked_to_side_by_side,
)
from steerlab.runtime.scoring import restrict_to_letters

SHARED_MIN_TOKENS = 32  # a common prefix at least this long is computed once for all items
# Copies of a chunk go side by side when together at most this many times as long as the cached prompt: beyond, the
# masked-out part of their attention costs more than the repeated cache it saves.
SIDE_BY_SIDE_LENGTH = 1.0


@dataclass(frozen=True)
class ScoredItem:
    """One question, tokenised for scoring.

    ``letters``: chunks hold one sequence, scored by the letter log-probabilities at its last position, over the
    item's first ``choices`` letters (None: all the scorer's letters; a 2-choice item in a 4-choice task can answer
    neither C nor D). Otherwise each chunk is a choice, scored by the log-likelihood of ``chunk[score_from + 1:]``
    (the choice's tokens).
    """

    prefix: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    score_from: tuple[int, ...] = ()
    steered_length: int | None = None  # steer only the first this many positions of each chunk; None: all
    choices: int | None = None


@dataclass(frozen=True)
class Scorer:
    """How chunk outputs become one score per choice."""

    letter_ids: tuple[tuple[int, ...], ...] | None = None
    length_normalize: bool = False

    @property
    def letters(self) -> bool:
        return self.letter_ids is not None


@dataclass
class PushScores:
    """Per-item choice scores: unsteered, and for each layer one list per push (row of the pushes tensor)."""

    baseline: list[list[float]]
    steered: dict[int, list[list[list[float]]]]


@dataclass
class GridScores:
    """Per-item choice scores: unsteered, and at every (layer, strength)."""

    baseline: list[list[float]]
    grid: dict[tuple[int, float], list[list[float]]]


def _scores(model: nn.Module, hidden: torch.Tensor, rows: Sequence[tuple[int, ...]], starts: Sequence[int],
            choices: Sequence[int | None], scorer: Scorer) -> list[float] | list[list[float]]:
    """Letter log-probs per row over its ``choices`` first letters (letters) or one log-likelihood per row, from the
    last block's output."""
    if scorer.letters:
        assert scorer.letter_ids is not None
        last = torch.tensor([len(r) - 1 for r in rows], device=hidden.device)
        picked = hidden[torch.arange(len(rows), device=hidden.device), last]
        flat = sorted({i for ids in scorer.letter_ids for i in ids})
        logits = final_logits(model, picked[:, None], torch.tensor(flat, device=hidden.device))[:, 0].float()
        column = {token: k for k, token in enumerate(flat)}
        counts = [len(scorer.letter_ids) if n is None else n for n in choices]
        scores = restrict_to_letters(logits, [[column[t] for t in ids] for ids in scorer.letter_ids], counts)
        return [list(map(float, row[:n])) for row, n in zip(scores, counts, strict=True)]
    # Logits only where a choice token is predicted: the unembedding is the costliest matrix of a small model.
    where = [(k, p) for k, (row, begin) in enumerate(zip(rows, starts, strict=True))
             for p in range(begin, len(row) - 1)]
    targets = torch.tensor([rows[k][p + 1] for k, p in where], device=hidden.device)
    picked_hidden = hidden[torch.tensor([k for k, _ in where]), torch.tensor([p for _, p in where])]
    logprobs = torch.cat([
        torch.log_softmax(final_logits(model, part[:, None])[:, 0].float(), dim=-1).gather(-1, t[:, None])[:, 0]
        for part, t in zip(picked_hidden.split(512), targets.split(512), strict=True)])
    totals = torch.zeros(len(rows), dtype=torch.float64, device=hidden.device)
    totals.index_add_(0, torch.tensor([k for k, _ in where], device=hidden.device), logprobs.double())
    out: list[float] = []
    for k, (row, begin) in enumerate(zip(rows, starts, strict=True)):
        count = len(row) - 1 - begin
        out.append(float(totals[k]) / count if scorer.length_normalize else float(totals[k]))
    return out


def _group(flat: list[float] | list[list[float]], counts: Sequence[int], letters: bool) -> list[list[float]]:
    if letters:
        return [list(row) for row in flat]  # type: ignore[arg-type]
    grouped, at = [], 0
    for n in counts:
        grouped.append([float(x) for x in flat[at:at + n]])  # type: ignore[arg-type]
        at += n
    return grouped


@dataclass
class _Shared:
    """The KV cache of the tokens every item's prefix starts with (a system prompt, in-context examples)."""

    length: int
    cache: DynamicCache | None


@torch.no_grad()
def _shared_prefix(model: nn.Module, items: Sequence[ScoredItem]) -> _Shared:
    prefixes = [item.prefix for item in items]
    length = min((len(p) for p in prefixes), default=0) - 1  # every item keeps a token of its own
    for k in range(length):
        if any(p[k] != prefixes[0][k] for p in prefixes):
            length = k
            break
    cache = DynamicCache(config=getattr(model, "config", None))
    # Between the shared prefix and an item's own tokens sits its padding, and a sliding window counts columns:
    # the padding would take window slots from real tokens.
    if length < SHARED_MIN_TOKENS or len(items) < 2 or any(getattr(k, "is_sliding", False) for k in cache.layers):
        return _Shared(0, None)
    device = next(model.parameters()).device
    base = base_model(model)
    base(input_ids=torch.tensor([prefixes[0][:length]], device=device), **cache_kwarg(base, cache), use_cache=True)
    return _Shared(length, cache)


LayerSet = tuple[int, ...]


@dataclass
class PushSetScores:
    """Per-item choice scores: unsteered, and for each layer set one list per push row."""

    baseline: list[list[float]]
    steered: dict[LayerSet, list[list[list[float]]]]


def _check_sets(sets: Mapping[LayerSet, Mapping[int, torch.Tensor]]) -> None:
    for key, group in sets.items():
        if not group or tuple(sorted(group)) != tuple(sorted(key)):
            raise ConfigError(f"push set {key} must give additions for exactly its layers, got {sorted(group)}")
        counts = {int(t.shape[0]) if t.ndim == 2 else -1 for t in group.values()}
        if len(counts) != 1 or min(counts) < 1:
            shapes = {layer: tuple(t.shape) for layer, t in group.items()}
            what = f"pushes at layer {key[0]}" if len(key) == 1 else f"pushes of layer set {key}"
            raise ConfigError(f"{what} must be non-empty (P, hidden) tensors with one P, got {shapes}")


def _on_steered(additions: torch.Tensor, steered: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(rows * P, seq, hidden): each of the P push rows on the steered positions of every chunk, rows grouped."""
    repeat = additions.shape[0]
    add = (additions.to(device=like.device, dtype=like.dtype).view(1, repeat, 1, -1)
           * steered[:, None].to(device=like.device, dtype=like.dtype))  # the block may sit on another device
    return add.reshape(like.shape[0] * repeat, *like.shape[1:])


def copies_side_by_side(cache: Cache, recording: Recording, layer: int, repeat: int, width: int, past: int) -> int:
    """How many of a replay's ``repeat`` copies of each chunk run side by side (see :mod:`steerlab.runtime.replay`):
    the most that divide ``repeat`` and are together no longer than ``SIDE_BY_SIDE_LENGTH`` times the cached prompt,
    which every block would otherwise concatenate once per copy; 1 where the model does not allow it (a
    sliding-window cache, blocks that build their own masks)."""
    fits = [side for side in range(2, repeat + 1)
            if repeat % side == 0 and side * width <= SIDE_BY_SIDE_LENGTH * past]
    if (not fits or any(getattr(above, "is_sliding", False) for above in cache.layers)
            or not masks_recorded(recording, layer, width, past)):
        return 1
    return max(fits)


@torch.no_grad()
def _batch(model: nn.Module, items: Sequence[ScoredItem], scorer: Scorer,
           sets: Mapping[LayerSet, Mapping[int, torch.Tensor]], pad: int, shared: _Shared,
           target: Target) -> PushSetScores:
    device = next(model.parameters()).device
    base = base_model(model)
    counts = [len(item.chunks) for item in items]
    prefix_len = max(len(item.prefix) for item in items) - shared.length
    cache: Cache | None = None
    # One row per chunk: without a prefix nothing below expands it from items to chunks.
    prefix_mask = torch.zeros((sum(counts), 0), dtype=torch.long, device=device)
    if prefix_len > 0:
        # [shared prefix][left padding][rest of the item's prefix]: the padding sits inside, masked out.
        ids, rest_mask = batching.pad([item.prefix[shared.length:] for item in items], pad, device=device,
                                      width=prefix_len)
        prefix_cache: Cache
        if shared.cache is not None:
            prefix_cache = expanded_cache(shared.cache, len(items))
            ones = torch.ones((len(items), shared.length), dtype=torch.long, device=device)
            prefix_mask = torch.cat([ones, rest_mask], dim=1)
        else:
            prefix_cache = DynamicCache(config=getattr(model, "config", None))
            prefix_mask = rest_mask
        positions = batching.positions(prefix_mask)[:, shared.length:]
        base(input_ids=ids, attention_mask=prefix_mask, position_ids=positions, **cache_kwarg(base, prefix_cache),
             use_cache=True)
        cache = prefix_cache
        index = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)], device=device)
        cache.batch_select_indices(index)
        prefix_mask = prefix_mask[index]
    rows = [chunk for item in items for chunk in item.chunks]
    starts = [s for item in items for s in (item.score_from or (0,) * len(item.chunks))]
    ids, chunk_mask = batching.pad(rows, pad, side="right", device=device)
    width = ids.shape[1]
    steered = torch.zeros((len(rows), width, 1), device=device)
    row = 0
    for item in items:
        for chunk in item.chunks:
            steered[row, : item.steered_length or len(chunk)] = 1.0
            row += 1
    mask = torch.cat([prefix_mask, chunk_mask], dim=1)
    positions = batching.positions(mask)[:, prefix_mask.shape[1]:]
    pristine = copy.deepcopy(cache) if cache is not None else None
    with record(model) as recording:
        base(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwarg(base, cache),
             use_cache=cache is not None)
    last = num_layers(model) - 1
    choices = [item.choices for item in items for _ in item.chunks]
    baseline = _group(_scores(model, recording.outputs[last], rows, starts, choices, scorer), counts, scorer.letters)
    steered_scores: dict[LayerSet, list[list[list[float]]]] = {}
    replay_caches: dict[int, Cache | None] = {}
    past = prefix_mask.shape[1]
    for key, group in sets.items():
        lowest = min(group)
        repeat = int(group[lowest].shape[0])
        first = lowest + 1 if target == "residual" else lowest  # the first block replayed
        side = 1 if pristine is None else copies_side_by_side(pristine, recording, first - 1, repeat, width, past)
        stacks = repeat // side
        if stacks == 1:
            replay_cache = pristine  # each row once: the replay only appends the copies, cropped off below
        else:
            if stacks not in replay_caches:
                replay_caches[stacks] = expanded_cache(pristine, stacks) if pristine is not None else None
            replay_cache = replay_caches[stacks]
        # A sliding-window cache layer cannot be cropped once its window is full: such layers are copied back.
        template = {k: copy.deepcopy(above) for k, above in enumerate(replay_cache.layers)
                    if getattr(above, "is_sliding", False)} if replay_cache is not None else {}
        out = recording.outputs[lowest]

        def laid_out(stacked: torch.Tensor, side: int = side) -> torch.Tensor:
            return stacked_to_side_by_side(stacked, side)

        if target == "residual":
            hidden = laid_out(out.repeat_interleave(repeat, dim=0) + _on_steered(group[lowest], steered, out))
            above = {layer: laid_out(_on_steered(t, steered, out)) for layer, t in group.items() if layer != lowest}
            final = hidden if lowest == last else run_above(model, recording, lowest, hidden, repeat=repeat,
                                                            cache=replay_cache, additions=above, side=side,
                                                            past=past)
        else:  # the push enters inside block `lowest`: replay it too, from its recorded input
            pushes = {layer: laid_out(_on_steered(t, steered, out)) for layer, t in group.items()}
            with adding(model, target, pushes):
                final = run_above(model, recording, lowest - 1,
                                  laid_out(block_input(recording, lowest).repeat_interleave(repeat, dim=0)),
                                  repeat=repeat, cache=replay_cache, side=side, past=past)
        final = side_by_side_to_stacked(final, side)
        if replay_cache is not None:
            for k in range(first, len(replay_cache.layers)):
                if k in template:
                    replay_cache.layers[k] = copy.deepcopy(template[k])
                else:  # drop the replayed chunk, keep the shared prefix
                    cast(DynamicLayer, replay_cache.layers[k]).crop(-width * side)
        flat = _scores(model, final, [r for r in rows for _ in range(repeat)],
                       [s for s in starts for _ in range(repeat)], [n for n in choices for _ in range(repeat)], scorer)
        steered_scores[key] = [_group(flat[k::repeat], counts, scorer.letters) for k in range(repeat)]
    return PushSetScores(baseline, steered_scores)


def score_push_sets(
    model: nn.Module,
    items: Sequence[ScoredItem],
    scorer: Scorer,
    sets: Mapping[LayerSet, Mapping[int, torch.Tensor]],
    *,
    batch_size: int = 8,
    progress: Progress = silent,
    what: str = "sweep",
    target: Target = "residual",
) -> PushSetScores:
    """Unsteered scores of ``items``, and their scores under each push of each layer set.

    ``sets[(l1, l2, ..)]`` maps each of its layers to a (P, hidden) tensor; push ``k`` adds row ``k`` of every layer's
    tensor at that layer, all at once (steering several layers together), on the steered positions of every chunk.
    The replay starts at the set's lowest layer. Strengths, negations and random directions are all just rows.
    ``target`` says where in each block a push is added: its output (``residual``), its attention or MLP output.
    """
    _check_sets(sets)
    check_target(target)
    pad = batching.pad_id(model)
    shared = _shared_prefix(model, items)
    # Batches of similar chunk and prefix lengths, so little of the replayed work is padding; results go back to
    # the input order.
    order = sorted(range(len(items)), key=lambda i: (max(map(len, items[i].chunks)), len(items[i].prefix)))
    baseline: list[list[float]] = [[] for _ in items]
    steered: dict[LayerSet, list[list[list[float]]]] = {
        key: [[[] for _ in items] for _ in range(int(next(iter(group.values())).shape[0]))]
        for key, group in sets.items()}
    for start in range(0, len(items), batch_size):
        picked = order[start:start + batch_size]
        part = _batch(model, [items[i] for i in picked], scorer, sets, pad, shared, target)
        for row, i in enumerate(picked):
            baseline[i] = part.baseline[row]
            for key, per_push in part.steered.items():
                for k, scores in enumerate(per_push):
                    steered[key][k][i] = scores[row]
        progress(min(start + batch_size, len(items)), len(items), what)
    return PushSetScores(baseline, steered)


def score_pushes(
    model: nn.Module,
    items: Sequence[ScoredItem],
    scorer: Scorer,
    pushes: Mapping[int, torch.Tensor],
    *,
    batch_size: int = 8,
    progress: Progress = silent,
    what: str = "sweep",
    target: Target = "residual",
) -> PushScores:
    """Unsteered scores of ``items``, and their scores with each row of ``pushes[layer]`` added at ``layer``.

    ``pushes[layer]`` is a (P, hidden) tensor: P additions to block ``layer``'s output, each on the steered positions
    of every chunk, all replayed in one batch. Strengths, negated vectors and random directions are all just rows.
    """
    result = score_push_sets(model, items, scorer, {(layer,): {layer: p} for layer, p in pushes.items()},
                             batch_size=batch_size, progress=progress, what=what, target=target)
    return PushScores(result.baseline, {key[0]: scores for key, scores in result.steered.items()})


def score_grid(
    model: nn.Module,
    items: Sequence[ScoredItem],
    scorer: Scorer,
    vector: SteeringVector | None = None,
    layers: Sequence[int] = (),
    strengths: Sequence[float] = (),
    *,
    batch_size: int = 8,
    progress: Progress = silent,
    what: str = "sweep",
    target: Target = "residual",
) -> GridScores:
    """Unsteered scores of ``items`` and their scores steered at every layer x strength (none if no vector)."""
    pushes: dict[int, torch.Tensor] = {}
    if vector is not None and strengths:
        missing = [layer for layer in layers if layer not in vector.layers]
        if missing:
            raise ConfigError(f"the vector has no direction at layer(s) {missing}")
        # strength * vector in the vector's dtype, as the steering hook computes it
        pushes = {layer: torch.tensor([float(s) for s in strengths], dtype=vector.layers[layer].dtype)[:, None]
                  * vector.layers[layer] for layer in layers}
    result = score_pushes(model, items, scorer, pushes, batch_size=batch_size, progress=progress, what=what,
                          target=target)
    grid = {(layer, float(s)): result.steered[layer][k] for layer in pushes for k, s in enumerate(strengths)}
    return GridScores(result.baseline, grid)


def predictions(scores: Sequence[Sequence[float]]) -> list[int]:
    """The chosen answer of each item: the best-scored choice (ties go to the first)."""
    return [max(range(len(row)), key=row.__getitem__) for row in scores]
