"""The decode batch's KV cache: one left-padded tensor pair per layer, rows joining and leaving between steps.

A request is prefilled alone (its own cache, no padding), then joins the batch: the shorter side is padded on the
left with zero keys and values that its attention mask hides. A finished row is dropped by index, and columns that
are padding in every remaining row are cut, so the batch is never wider than its longest live row.

Example::

    batch = KVBatch.empty()
    batch.join(KVBatch.from_cache(prefill_cache))       # a prefilled request becomes a row
    cache = batch.as_cache()                            # feed to the model with batch.mask plus one column
    batch.absorb(cache, steps=1)                        # the step's new column, written by the model
    batch.keep([0])                                     # drop the other rows
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from steerlab.errors import ConfigError


@dataclass
class KVBatch:
    """Per layer ``(keys, values)`` of shape (rows, heads, columns, head_dim), and the (rows, columns) mask."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor  # long, 1 where a column holds a real token of its row

    @classmethod
    def empty(cls) -> KVBatch:
        return cls([], torch.zeros((0, 0), dtype=torch.long))

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @classmethod
    def from_cache(cls, cache: DynamicCache) -> KVBatch:
        """The rows of a cache the model filled, every column real."""
        layers = _tensors(cache)
        rows, columns = int(layers[0][0].shape[0]), int(layers[0][0].shape[2])
        return cls(layers, torch.ones((rows, columns), dtype=torch.long, device=layers[0][0].device))

    def as_cache(self) -> DynamicCache:
        """A cache over this batch's tensors for the next forward call (which appends to its own copy)."""
        return DynamicCache(ddp_cache_data=self.layers)

    def absorb(self, cache: DynamicCache, steps: int) -> None:
        """Take the tensors of ``cache`` after a forward call that added ``steps`` real columns to every row."""
        self.layers = _tensors(cache)
        ones = torch.ones((self.rows, steps), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)

    def join(self, other: KVBatch) -> None:
        """Append ``other``'s rows below these, left-padding whichever side is shorter."""
        if self.rows == 0:
            self.layers, self.mask = other.layers, other.mask
            return
        if len(other.layers) != len(self.layers):
            raise ConfigError(f"cannot join caches of {len(other.layers)} and {len(self.layers)} layers")
        width = max(self.mask.shape[1], other.mask.shape[1])
        mine, theirs = _pad_left(self, width), _pad_left(other, width)
        self.layers = [(torch.cat([k1, k2]), torch.cat([v1, v2]))
                       for (k1, v1), (k2, v2) in zip(mine.layers, theirs.layers, strict=True)]
        self.mask = torch.cat([mine.mask, theirs.mask])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order), then cut the leading columns no remaining row uses."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        self.layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.layers]
        if not rows:
            self.layers, self.mask = [], self.mask[:, :0]
            return
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.mask.shape[1]
        if start:
            self.mask = self.mask[:, start:]
            self.layers = [(k[:, :, start:], v[:, :, start:]) for k, v in self.layers]


def _tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in cache.layers]
    pairs = [(k, v) for k, v in layers if isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)]
    if not pairs or len(pairs) != len(layers):
        raise ConfigError("the cache does not hold keys and values at every layer (was it filled by a forward "
                          "call of an attention-only model?)")
    return pairs


def _pad_left(batch: KVBatch, width: int) -> KVBatch:
    pad = width - int(batch.mask.shape[1])
    if pad == 0:
        return batch
    layers = [(torch.nn.functional.pad(k, (0, 0, pad, 0)), torch.nn.functional.pad(v, (0, 0, pad, 0)))
              for k, v in batch.layers]
    return KVBatch(layers, torch.nn.functional.pad(batch.mask, (pad, 0)))
