"""The paired gathers of ``arch/fused.py`` against one ``embedding_bag`` / sampled product per
gather, on random bags (some empty), in float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sae_gated_plugin.arch import fused, kernels

N_BAGS, N_TABLE, WIDTH = 37, 53, 12


def random_bags(gen: torch.Generator, n_bags: int, n_table: int) -> tuple[torch.Tensor, ...]:
    """Bag sizes 0-5 (bag ``b`` is ``indices[starts[b]:starts[b + 1]]``), ``bag_of`` per index."""
    sizes = torch.randint(0, 6, (n_bags,), generator=gen)
    sizes[3] = 0
    starts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    bag_of = torch.repeat_interleave(torch.arange(n_bags), sizes)
    indices = torch.randint(0, n_table, (int(starts[-1]),), generator=gen)
    return indices, starts, bag_of


def bag(indices: torch.Tensor, starts: torch.Tensor, table: torch.Tensor, w: torch.Tensor):
    return F.embedding_bag(indices, table, starts[:-1], mode="sum", per_sample_weights=w)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_two_bag_sums(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    indices, starts, _ = random_bags(gen, N_BAGS, N_TABLE)
    table = torch.randn(N_TABLE, WIDTH, generator=gen).to(dtype)
    first, second = (torch.randn(indices.shape[0], generator=gen).to(dtype) for _ in range(2))
    got = fused.two_bag_sums(indices, starts[:-1], table, first, second)
    assert torch.equal(got[0], bag(indices, starts, table, first))
    assert torch.equal(got[1], bag(indices, starts, table, second))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_two_table_bag_sums(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    indices, starts, bag_of = random_bags(gen, N_BAGS, N_TABLE)
    tables = tuple(torch.randn(N_TABLE, WIDTH, generator=gen).to(dtype) for _ in range(2))
    weights = tuple(torch.randn(indices.shape[0], generator=gen).to(dtype) for _ in range(2))
    got = fused.two_table_bag_sums(indices, starts, bag_of, tables, weights)  # type: ignore[arg-type]
    want = sum(bag(indices, starts, t, w).float() for t, w in zip(tables, weights, strict=True))
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_two_sampled_dots(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "BLOCK_LATENTS", 10)  # several upcast blocks in bfloat16
    gen = torch.Generator().manual_seed(2)
    rows, starts, cols = random_bags(gen, N_BAGS, N_TABLE)  # bags are latents, indices rows
    rows = torch.cat([r.sort().values for r in rows.split(starts.diff().tolist())])
    weight = torch.randn(N_BAGS, WIDTH, generator=gen).to(dtype)
    grads = tuple(torch.randn(N_TABLE, WIDTH, generator=gen).to(dtype) for _ in range(2))
    got = fused.two_sampled_dots(starts, rows, cols, weight, grads)  # type: ignore[arg-type]
    for dots, grad in zip(got, grads, strict=True):
        want = kernels.sampled_dots(starts, rows, weight, grad)
        torch.testing.assert_close(dots, want, rtol=1e-5, atol=1e-5)
        exact = (weight.double()[cols] * grad.double()[rows]).sum(-1)
        torch.testing.assert_close(dots.double(), exact, rtol=1e-4, atol=1e-4)
