"""Two weighted gathers over the same open pairs as one kernel call each.

The sparse step gathers d_in-wide rows twice per pattern: two decodes (features and gates, both
through ``W_dec``), two sampled products (``d_recon`` and ``d_aux`` against ``W_dec``) and, with
a trainable auxiliary decoder, two decoder-gradient sums. Each pair below runs as one
``embedding_bag`` or one ``sampled_addmm``, so the shared operand is read once per bag and the
op's dispatch and threading happen once. Each returns what the two separate calls would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sae_gated_plugin.arch.kernels import at, sampled_dots


def bag_sums(
    indices: torch.Tensor, starts: torch.Tensor, table: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per bag (bag ``i`` is ``indices[starts[i]:starts[i + 1]]``), the ``weights``-weighted sum
    of the ``table`` rows it names."""
    return F.embedding_bag(
        indices, table, starts, mode="sum", per_sample_weights=weights.to(table.dtype)
    )


def two_bag_sums(
    indices: torch.Tensor,
    starts: torch.Tensor,
    table: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``bag_sums`` of the same bags of one table with two sets of weights, in one call."""
    n_bags = starts.shape[0]
    both = bag_sums(
        torch.cat([indices, indices]),
        torch.cat([starts, starts + indices.shape[0]]),
        table,
        torch.cat([first.to(table.dtype), second.to(table.dtype)]),
    )
    return both[:n_bags], both[n_bags:]


def _interleaved(
    starts: torch.Tensor, bag_of: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where pair ``p`` of bag ``b`` (bags ``starts[b]:starts[b + 1]``) goes when every bag is
    followed by a second copy of itself: ``p + starts[b]`` and ``p + starts[b + 1]``; and the
    doubled bag starts."""
    positions = torch.arange(n, device=starts.device)
    first = positions + at(starts[:-1], bag_of)
    second = positions + at(starts[1:], bag_of)
    return first, second, starts * 2


def two_table_bag_sums(
    indices: torch.Tensor,
    starts: torch.Tensor,
    bag_of: torch.Tensor,
    tables: tuple[torch.Tensor, torch.Tensor],
    weights: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """``bag_sums(indices, starts[:-1], tables[0], weights[0])`` plus the same for ``tables[1]``
    and ``weights[1]``, in one call (``starts`` ends with the total, ``bag_of[p]`` is pair
    ``p``'s bag)."""
    n, n_rows = indices.shape[0], tables[0].shape[0]
    first, second, doubled = _interleaved(starts, bag_of, n)
    table = torch.cat(tables)
    both_indices = indices.new_empty(2 * n)
    both_indices[first], both_indices[second] = indices, indices + n_rows
    both_weights = weights[0].new_empty(2 * n, dtype=table.dtype)
    both_weights[first], both_weights[second] = weights[0], weights[1]
    return bag_sums(both_indices, doubled[:-1], table, both_weights)


def two_sampled_dots(
    latent_starts: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    weight: torch.Tensor,
    grads: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sampled_dots`` of ``weight`` with each of two gradients (latent-major pairs, ``cols``
    their latents), as one sampled product over both."""
    n, n_rows = rows.shape[0], grads[0].shape[0]
    first, second, doubled = _interleaved(latent_starts, cols, n)
    both_rows = rows.new_empty(2 * n)
    both_rows[first], both_rows[second] = rows, rows + n_rows
    dots = sampled_dots(doubled, both_rows, weight, torch.cat(grads))
    return at(dots, first), at(dots, second)
