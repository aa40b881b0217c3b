"""Activations at chosen layers and tokens, from as little computation as possible.

Three savings, all exact:
- one forward pass serves every requested layer, and it stops after the deepest one (no upper layers, no LM head);
- texts that share a prefix (the question of a contrastive pair) compute it once, then continue from its KV cache;
- batches are formed from texts of similar length, so little of the work is padding.

Layer ``i`` is the output of decoder block ``i`` (``hidden_states[i + 1]`` in transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from steerlab.errors import ConfigError
from steerlab.models import Target, base_model, cache_kwarg, hidden_size, num_layers
from steerlab.progress import Progress, silent
from steerlab.runtime import batching
from steerlab.runtime.capture import capture, run_until_captured


@dataclass(frozen=True)
class Group:
    """Texts that continue one shared prefix; the prefix is computed once for all of them.

    ``spans[k]`` is the token range ``[start, end)`` of ``suffixes[k]`` (in suffix coordinates) whose activations are
    averaged: ``(n - 1, n)`` is the last token, ``(0, n)`` the mean over the suffix.
    """

    prefix: tuple[int, ...]
    suffixes: tuple[tuple[int, ...], ...]
    spans: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if len(self.suffixes) != len(self.spans) or not self.suffixes:
            raise ConfigError("a group needs one span per suffix and at least one suffix")
        for suffix, (start, end) in zip(self.suffixes, self.spans, strict=True):
            if not 0 <= start < end <= len(suffix):
                raise ConfigError(f"token span ({start}, {end}) does not fit a continuation of {len(suffix)} tokens")


def single(ids: Sequence[int], span: tuple[int, int] | None = None) -> Group:
    """One text with no shared prefix; by default its last token is read."""
    return Group((), (tuple(ids),), (span or (len(ids) - 1, len(ids)),))


@torch.no_grad()
def _run_batch(
    model: nn.Module, groups: Sequence[Group], layers: Sequence[int], pad: int, target: Target
) -> dict[int, torch.Tensor]:
    """Activations (reduced over spans) of every suffix of ``groups``, which all have the same number of suffixes."""
    base = base_model(model)
    device = next(model.parameters()).device
    per_group = len(groups[0].suffixes)
    prefix_len = max(len(g.prefix) for g in groups)
    cache = None
    # One row per suffix: without a prefix there is nothing to repeat per group below.
    prefix_mask = torch.zeros((len(groups) * per_group, 0), dtype=torch.long, device=device)
    if prefix_len:
        ids, prefix_mask = batching.pad([g.prefix for g in groups], pad, device=device)
        cache = DynamicCache(config=getattr(model, "config", None))
        # The prefix's cache is only needed up to the deepest layer read: stop there too.
        with capture(model, layers, stop_after=True):
            run_until_captured(base, input_ids=ids, attention_mask=prefix_mask,
                               position_ids=batching.positions(prefix_mask), **cache_kwarg(base, cache),
                               use_cache=True)
        if per_group > 1:
            cache.batch_repeat_interleave(per_group)
        prefix_mask = prefix_mask.repeat_interleave(per_group, dim=0)

    suffixes = [s for g in groups for s in g.suffixes]
    spans = [s for g in groups for s in g.spans]
    ids, suffix_mask = batching.pad(suffixes, pad, side="right", device=device)
    width = ids.shape[1]
    mask = torch.cat([prefix_mask, suffix_mask], dim=1)
    positions = batching.positions(mask)[:, prefix_mask.shape[1]:]
    with capture(model, layers, stop_after=True, target=target) as captured:
        run_until_captured(base, input_ids=ids, attention_mask=mask, position_ids=positions,
                           **cache_kwarg(base, cache), use_cache=cache is not None)

    weights = torch.zeros((len(suffixes), width), device=device)
    for row, (start, end) in enumerate(spans):
        weights[row, start:end] = 1.0 / (end - start)
    return {
        layer: torch.einsum("bt,bth->bh", weights.to(captured[layer].dtype), captured[layer]).float().cpu()
        for layer in layers
    }


def extract(
    model: nn.Module,
    groups: Sequence[Group],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    progress: Progress = silent,
    target: Target = "residual",
) -> dict[int, torch.Tensor]:
    """Activations of every suffix of every group at ``layers``: ``{layer: tensor (n_texts, hidden)}`` in input order.

    ``target`` says which output of each block is read: the block's (the residual stream), its attention's or its
    MLP's.

    Memory stays bounded by one batch's activations at the requested layers plus the (n_texts, hidden) results.
    """
    depth = num_layers(model)
    if not layers:
        raise ConfigError("no layers requested")
    bad = [layer for layer in layers if not 0 <= layer < depth]
    if bad:
        raise ConfigError(f"layer(s) {bad} out of range: the model has layers 0..{depth - 1}")
    offsets, total = [], 0
    for group in groups:
        offsets.append(total)
        total += len(group.suffixes)
    out = {layer: torch.empty((total, hidden_size(model))) for layer in layers}
    # Similar lengths together; groups with and without a prefix, or with different sizes, never share a batch.
    order = sorted(
        range(len(groups)),
        key=lambda i: (len(groups[i].suffixes), len(groups[i].prefix) > 0, len(groups[i].prefix),
                       max(map(len, groups[i].suffixes))),
    )
    pad, done, start = batching.pad_id(model), 0, 0
    while start < len(order):
        first = groups[order[start]]
        per_batch = max(1, batch_size // len(first.suffixes))
        end = start
        while (end < len(order) and end - start < per_batch
               and len(groups[order[end]].suffixes) == len(first.suffixes)
               and (len(groups[order[end]].prefix) > 0) == (len(first.prefix) > 0)):
            end += 1
        chunk = order[start:end]
        acts = _run_batch(model, [groups[i] for i in chunk], layers, pad, target)
        rows = torch.tensor([offsets[i] + k for i in chunk for k in range(len(groups[i].suffixes))])
        for layer in layers:
            out[layer][rows] = acts[layer]
        done += len(rows)
        progress(done, total, "activations")
        start = end
    return out
