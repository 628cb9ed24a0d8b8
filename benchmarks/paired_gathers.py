"""Paired gathers of the sparse step against one call per gather (what the step ships).

The sparse step gathers d_in-wide rows twice per pattern: two decodes (features and gates, both
through ``W_dec``), two sampled products (``d_recon`` and ``d_aux`` against ``W_dec``) and, with
a trainable auxiliary decoder, two decoder-gradient sums. Below, each pair runs as one
``embedding_bag`` or one ``sampled_addmm`` call (sparsify's way of decoding), and is timed
against the two separate calls on the open pairs of a ~1% open batch:

    python benchmarks/paired_gathers.py                 # d_sae 4608, batch 4096, d_in 576
    python benchmarks/paired_gathers.py --threads 1     # CPU time of one thread: load-proof

With ``--threads 1`` it reports thread CPU time, which other processes on a busy machine do not
inflate; otherwise wall time. Minimum and median of ``--repeats`` calls.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import sae_lens  # noqa: F401  (loads the plugin whole before its modules are imported below)
import torch
import torch.nn.functional as F

from sae_gated_plugin.arch.kernels import at, sampled_dots
from sae_gated_plugin.arch.sparse import find_open_pairs


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


def cases(d_in: int, d_sae: int, batch: int) -> dict[str, Callable[[], object]]:
    """The separate and paired calls on the open pairs of a random batch, ~1% open."""
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(batch, d_in, generator=gen) @ torch.randn(d_in, d_sae, generator=gen)
    b_gate = -torch.quantile(pre[:256].flatten(), 0.99).expand(d_sae).contiguous()
    pairs = find_open_pairs(pre, b_gate)
    n = pairs.cols.shape[0]
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    first, second = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    d_recon, d_aux = (torch.randn(batch, d_in, generator=gen) for _ in range(2))
    rows_t, starts, cols_t = pairs.rows_t, pairs.latent_starts, pairs.cols_t
    print(f"d_sae {d_sae}, batch {batch}, d_in {d_in}: {n} open pairs ({n / pre.numel():.2%})")
    return {
        "decodes: 2 embedding_bag calls": lambda: (
            bag_sums(pairs.cols, pairs.row_starts, w_dec, first),
            bag_sums(pairs.cols, pairs.row_starts, w_dec, second),
        ),
        "decodes: 1 call (two_bag_sums)": lambda: two_bag_sums(
            pairs.cols, pairs.row_starts, w_dec, first, second
        ),
        "sampled dots: 2 sampled_addmm calls": lambda: (
            sampled_dots(starts, rows_t, w_dec, d_recon),
            sampled_dots(starts, rows_t, w_dec, d_aux),
        ),
        "sampled dots: 1 call (two_sampled_dots)": lambda: two_sampled_dots(
            starts, rows_t, cols_t, w_dec, (d_recon, d_aux)
        ),
        "W_dec grad: 2 embedding_bag calls": lambda: bag_sums(
            rows_t, starts[:-1], d_recon, first
        ).add_(bag_sums(rows_t, starts[:-1], d_aux, second)),
        "W_dec grad: 1 call (two_table_bag_sums)": lambda: two_table_bag_sums(
            rows_t, starts, cols_t, (d_recon, d_aux), (first, second)
        ),
    }


def main() -> None:
    """Time every case, interleaved, and print minimum and median per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch threads; 1: thread CPU time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {clock.__name__}")
    timed = cases(args.d_in, args.d_sae, args.batch)
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.repeats):
        for name, call in timed.items():
            start = clock()
            call()
            times[name].append(clock() - start)
    for name, values in times.items():
        low, mid = min(values) * 1e3, statistics.median(values) * 1e3
        print(f"  {name:<42} min {low:7.1f} ms  median {mid:7.1f} ms")


if __name__ == "__main__":
    main()
