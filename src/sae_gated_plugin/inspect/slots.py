"""A fixed number of entries per group, those with the largest keys, merged batch by batch.

With the activation as key this keeps a latent's top activations; with independent uniform
random keys it keeps a uniform sample without replacement (the largest keys of a union are the
largest of the parts' largest keys, so merging kept entries stays exact)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def select(group: Tensor, key: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Entries with the ``size`` largest keys of each group: (entry, group, rank in group);
    ties keep the earlier entry."""
    # by key, then stably by group: each group's entries end up contiguous, largest key first
    order = torch.argsort(key, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    sorted_group = group[order]
    rank = torch.arange(len(order), device=key.device)
    rank = rank - torch.searchsorted(sorted_group, sorted_group)
    keep = rank < size
    return order[keep], sorted_group[keep], rank[keep]


Window = Callable[[Tensor], tuple[Tensor, Tensor]]
FILLS = (-torch.inf, 0, -1, -1, -1, 0)
DTYPES = (torch.float64, torch.float32, torch.long, torch.long, torch.long, torch.float32)


class Slots:
    """Per group, the ``size`` entries with the largest keys: key, value, sequence, position,
    and the context window's token ids (-1 outside the sequence) and activations."""

    def __init__(self, groups: int, size: int, width: int) -> None:
        shapes = [(groups, size)] * 4 + [(groups, size, width)] * 2
        self.data = [
            torch.full(s, f, dtype=d) for s, f, d in zip(shapes, FILLS, DTYPES, strict=True)
        ]

    def offer(self, old_group: Tensor, group: Tensor, new: list[Tensor], window: Window) -> None:
        """Merge new entries (``new``: key, value, sequence, position, with one ``group`` each)
        into the kept ones, whose groups ``old_group`` maps to the groups now; ``window(i)``
        gives the context windows of new entries ``i`` (called only for those kept)."""
        size = self.data[0].shape[1]
        kept = torch.nonzero(self.data[0].reshape(-1) > -torch.inf).squeeze(1)
        pool_group = torch.cat([old_group.repeat_interleave(size)[kept], group])
        pool_key = torch.cat([self.data[0].reshape(-1)[kept], new[0]])
        entry, dest_group, dest_rank = select(pool_group, pool_key, size)
        is_old = entry < len(kept)
        src_old, src_new = kept[entry[is_old]], entry[~is_old] - len(kept)
        added = [t[src_new] for t in new] + list(window(src_new))
        for n, (old, add) in enumerate(zip(self.data, added, strict=True)):
            self.data[n] = out = torch.full_like(old, FILLS[n])
            out[dest_group[is_old], dest_rank[is_old]] = old.flatten(0, 1)[src_old]
            out[dest_group[~is_old], dest_rank[~is_old]] = add.to(old.dtype)
